// The node's dashboard: reads the operator API (/api/v0/streamspace/*) every two seconds and
// sets the space offered. A token given as `#token=...` in the address is sent as a bearer
// token (needed when the API listens off loopback).
'use strict'

const token = new URLSearchParams(location.hash.slice(1)).get('token')

async function call (command, args = {}) {
  const url = new URL(`/api/v0/${command}`, location.origin)
  for (const [k, v] of Object.entries(args)) url.searchParams.set(k, v)
  const headers = token ? { Authorization: `Bearer ${token}` } : {}
  const res = await fetch(url, { method: 'POST', headers })
  const body = await res.json()
  if (!res.ok) throw new Error(body.Message || `${command}: HTTP ${res.status}`)
  return body
}

const $ = (id) => document.getElementById(id)
const set = (id, text) => { $(id).textContent = text }

function bytes (n) {
  if (n == null) return 'unbounded'
  const units = ['B', 'kB', 'MB', 'GB', 'TB']
  let i = 0
  let v = n
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++ }
  return `${v.toFixed(i === 0 ? 0 : 2)} ${units[i]}`
}

function chart (history) {
  // history: [ms, total in, total out] per second; plot the rates.
  const rates = []
  for (let i = 1; i < history.length; i++) {
    const dt = (history[i][0] - history[i - 1][0]) / 1000
    if (dt > 0) {
      rates.push([history[i][0], (history[i][1] - history[i - 1][1]) / dt, (history[i][2] - history[i - 1][2]) / dt])
    }
  }
  const max = Math.max(1, ...rates.map(r => Math.max(r[1], r[2])))
  const t0 = rates.length ? rates[0][0] : 0
  const span = Math.max(1, rates.length ? rates[rates.length - 1][0] - t0 : 1)
  const line = (k) => rates.map(r => `${((r[0] - t0) / span * 600).toFixed(1)},${(155 - r[k] / max * 150).toFixed(1)}`).join(' ')
  $('chart-in').setAttribute('points', line(1))
  $('chart-out').setAttribute('points', line(2))
  const last = rates[rates.length - 1]
  set('rates', last ? `${bytes(last[1])}/s / ${bytes(last[2])}/s` : '…')
}

async function refresh () {
  try {
    const s = await call('streamspace/status')
    set('peer', `${s.PeerId} (${s.Tier})`)
    set('quota', bytes(s.Quota))
    set('used', bytes(s.Used))
    set('blocks', String(s.Blocks))
    $('usage').value = s.Quota ? Math.min(1, s.Used / s.Quota) : 0
    set('tier', s.Tier)
    set('peers', String(s.Peers.Connected))
    set('peers-tier1', String(s.Peers.Tier1))
    set('peers-edge', String(s.Peers.Edge))
    set('shards-served', String(s.ShardsServed))
    set('bytes-served', bytes(s.BytesServed))
    set('shards-received', String(s.ShardsReceived))
    chart(s.Bandwidth)
    const pinned = $('pinned')
    pinned.replaceChildren(...s.Pinned.map(c => {
      const li = document.createElement('li')
      li.textContent = c
      return li
    }))
    if (s.Payments) {
      const p = s.Payments
      set('payments', `This period: ${p.ShardsNow} shards, ${p.EarnedNow} tinybars; last period: ${p.EarnedLastPeriod} tinybars. Receipts accepted ${p.Receipts.Accepted}, refused ${p.Receipts.Refused}, sent ${p.Receipts.Sent}.`)
      const e = await call('streamspace/earnings')
      $('earnings').tBodies[0].replaceChildren(...e.Periods.map(r => {
        const tr = document.createElement('tr')
        for (const v of [r.Period, new Date(r.StartSecs * 1000).toISOString().slice(0, 19), r.Payers, r.Shards, r.Tinybars]) {
          const td = document.createElement('td')
          td.textContent = String(v)
          tr.append(td)
        }
        return tr
      }))
      const st = s.Settlement
      set('settlement', st ? `Receipts posted through period ${st.ReceiptsPostedThrough ?? '–'}; collateral locked for period ${st.CollateralLockedFor ?? '–'}.` : '')
    } else {
      set('payments', 'Free service (no [payments] configured).')
    }
    $('error').hidden = true
    if ($('offer-gb').value === '' && s.Quota != null) $('offer-gb').value = s.Quota / 1e9
  } catch (e) {
    $('error').hidden = false
    set('error', e.message)
  }
}

$('offer').addEventListener('submit', async (ev) => {
  ev.preventDefault()
  const value = Math.round(Number($('offer-gb').value) * 1e9)
  try {
    const q = await call('streamspace/quota', { arg: String(value) })
    set('offer-result', `now offering ${bytes(q.Quota)}`)
  } catch (e) {
    set('offer-result', e.message)
  }
  refresh()
})

refresh()
setInterval(refresh, 2000)
