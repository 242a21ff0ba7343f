// The player page: hls.js on the gateway's playlist, and the figures a viewer cares about
// (start-up time, the share of bytes this node took from peers rather than the publisher,
// stalls). No inline script: the page's Content-Security-Policy allows none.
'use strict'
;(() => {
  const main = document.getElementById('player')
  const video = document.getElementById('video')
  const src = main.dataset.src
  const kind = main.dataset.kind
  const statsUrl = main.dataset.stats
  const t0 = performance.now()
  const state = { startupMs: null, errors: [], stalls: 0, levels: [], levelSwitches: [], loading: [], level: null }
  window.streamspacePlayer = state
  const set = (id, text) => { document.getElementById(id).textContent = text }
  const fail = (text) => {
    state.errors.push(text)
    const li = document.createElement('li')
    li.textContent = text
    document.getElementById('errors').appendChild(li)
  }
  video.addEventListener('playing', () => {
    if (state.startupMs === null) {
      state.startupMs = Math.round(performance.now() - t0)
      set('startup', `${state.startupMs} ms`)
    }
    set('state', 'playing')
  })
  video.addEventListener('waiting', () => {
    if (state.startupMs !== null) { state.stalls += 1; set('stalls', String(state.stalls)) }
    set('state', 'buffering')
  })
  video.addEventListener('ended', () => set('state', 'ended'))
  video.addEventListener('error', () => fail(`video error ${video.error && video.error.code}`))
  video.addEventListener('timeupdate', () => set('position', `${video.currentTime.toFixed(1)} s`))

  if (!window.Hls || !window.Hls.isSupported()) {
    fail('this browser has no Media Source Extensions')
    return
  }
  const hls = new window.Hls({
    enableWorker: false,
    lowLatencyMode: false,
    liveSyncDurationCount: 2,
    manifestLoadingMaxRetry: 6,
    levelLoadingMaxRetry: 6,
    fragLoadingMaxRetry: 6
  })
  hls.on(window.Hls.Events.ERROR, (_e, d) => {
    if (d.fatal) fail(`${d.type}: ${d.details}`)
  })
  hls.on(window.Hls.Events.LEVEL_SWITCHED, (_e, d) => {
    const l = hls.levels[d.level]
    state.level = d.level
    state.levelSwitches.push({ level: d.level, height: l ? l.height : null, at: performance.now() - t0 })
    set('rendition', l && l.height ? `${l.height}p (${Math.round(l.bitrate / 1000)} kbit/s)` : `level ${d.level}`)
  })
  // The rendition being fetched (it plays once the buffer ahead of it has played).
  hls.on(window.Hls.Events.LEVEL_SWITCHING, (_e, d) => {
    const l = hls.levels[d.level]
    state.loading.push({ level: d.level, height: l ? l.height : null, at: performance.now() - t0 })
  })
  hls.on(window.Hls.Events.MANIFEST_PARSED, () => {
    state.levels = hls.levels.map((l) => ({ height: l.height, bitrate: l.bitrate }))
    video.play().catch((e) => fail(`play: ${e}`))
  })
  hls.loadSource(src)
  hls.attachMedia(video)

  const refresh = async () => {
    try {
      const r = await fetch(statsUrl, { cache: 'no-store' })
      if (!r.ok) return
      const s = await r.json()
      state.stats = s
      const total = s.bytesReceived
      if (total > 0) {
        const share = kind === 'live' ? s.bytesFromPeers / total : s.blocksFetched / Math.max(1, s.blocksFetched + s.blocksFromStore)
        set('peers', `${(100 * share).toFixed(0)}% of ${(total / 1e6).toFixed(2)} MB`)
      } else {
        set('peers', 'none yet (all from this node)')
      }
    } catch (e) {
      // The figures are best effort; playback does not depend on them.
    }
  }
  refresh()
  setInterval(refresh, 2000)
})()
