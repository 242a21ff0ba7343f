#!/usr/bin/env node
// A rendition switch in headless Chromium (Debian's, driven by playwright-core): the player
// page plays an item with several renditions over a link of FAST_KBPS (DevTools network
// emulation); once hls.js fetches the tallest one and playback is under way, the link drops
// to SLOW_KBPS and hls.js must move to a lower rendition while playback goes on with no error
// event. A screenshot is kept.
//
//   node abr.mjs FAST_KBPS SLOW_KBPS SCREENSHOT URL
//
// Prints {"url", "levels", "loading", "throttledAt", "switchedDown", "currentTime",
// "errors", "consoleErrors", "screenshot"} as JSON.

import { chromium } from 'playwright-core'

const [fastKbps, slowKbps, screenshot, url] = process.argv.slice(2)
if (!url) {
  console.error('usage: node abr.mjs FAST_KBPS SLOW_KBPS SCREENSHOT URL')
  process.exit(2)
}
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium'
const browser = await chromium.launch({
  executablePath,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required']
})
try {
  const page = await browser.newPage({ viewport: { width: 960, height: 720 } })
  const consoleErrors = []
  page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text()) })
  page.on('pageerror', e => consoleErrors.push(String(e)))
  page.on('response', r => { if (r.status() >= 400) consoleErrors.push(`${r.status()} ${r.url()}`) })
  const cdp = await page.context().newCDPSession(page)
  await cdp.send('Network.enable')
  const link = (kbps) => cdp.send('Network.emulateNetworkConditions', {
    offline: false, latency: 20, downloadThroughput: kbps * 1000 / 8, uploadThroughput: kbps * 1000 / 8
  })
  // A link fast enough for the tallest rendition, slow enough that the buffer fills over
  // seconds rather than in one go (as on loopback).
  await link(Number(fastKbps))
  await page.goto(url)
  let reachedTop = true
  try {
    // On the fast link hls.js fetches the tallest rendition.
    await page.waitForFunction(() => {
      const s = window.streamspacePlayer
      if (!s || s.errors.length > 0) return s && s.errors.length > 0
      const top = s.levels.length - 1
      return top > 0 && s.loading.some(l => l.level === top) &&
        document.getElementById('video').currentTime > 1
    }, null, { timeout: 90000, polling: 100 })
  } catch (e) {
    reachedTop = false
  }
  // Renditions hls.js chooses from here on are chosen under the throttle.
  const throttledAt = await page.evaluate(() => {
    window.streamspaceThrottledFrom = window.streamspacePlayer.loading.length
    return document.getElementById('video').currentTime
  })
  await link(Number(slowKbps))
  let switchedDown = reachedTop
  if (reachedTop) {
    try {
      await page.waitForFunction(() => {
        const s = window.streamspacePlayer
        const top = s.levels.length - 1
        return s.errors.length > 0 ||
          s.loading.slice(window.streamspaceThrottledFrom).some(l => l.level < top)
      }, null, { timeout: 90000, polling: 250 })
    } catch (e) {
      switchedDown = false
    }
  }
  const state = await page.evaluate(() => ({
    levels: window.streamspacePlayer.levels,
    loading: window.streamspacePlayer.loading,
    currentTime: document.getElementById('video').currentTime,
    errors: window.streamspacePlayer.errors
  }))
  if (state.errors.length > 0) switchedDown = false
  await page.screenshot({ path: screenshot })
  console.log(JSON.stringify({ url, reachedTop, throttledAt, switchedDown, ...state, consoleErrors, screenshot }))
} finally {
  await browser.close()
}
