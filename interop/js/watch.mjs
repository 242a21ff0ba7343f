#!/usr/bin/env node
// Plays StreamSpace player pages in headless Chromium (Debian's, driven by playwright-core,
// pinned in package-lock.json): each page must play past MIN_SECONDS with no error event;
// a screenshot of each is kept.
//
//   node watch.mjs MIN_SECONDS SCREENSHOT_PREFIX URL...
//
// Prints [{"url", "currentTime", "startupMs", "errors", "consoleErrors", "stalls",
// "peers", "screenshot"}, ...] as JSON.

import { chromium } from 'playwright-core'

const [minSeconds, prefix, ...urls] = process.argv.slice(2)
if (urls.length === 0) {
  console.error('usage: node watch.mjs MIN_SECONDS SCREENSHOT_PREFIX URL...')
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
  const play = async (url, i) => {
    const page = await browser.newPage({ viewport: { width: 960, height: 720 } })
    const consoleErrors = []
    page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text()) })
    page.on('pageerror', e => consoleErrors.push(String(e)))
    // Which request failed, since the console's message does not name it.
    page.on('response', r => { if (r.status() >= 400) consoleErrors.push(`${r.status()} ${r.url()}`) })
    await page.goto(url)
    let played = true
    try {
      await page.waitForFunction((min) => {
        const v = document.getElementById('video')
        const s = window.streamspacePlayer
        return (v && v.currentTime > min) || (s && s.errors.length > 0)
      }, Number(minSeconds), { timeout: 90000, polling: 250 })
    } catch (e) {
      played = false
    }
    const state = await page.evaluate(() => ({
      currentTime: document.getElementById('video').currentTime,
      startupMs: window.streamspacePlayer.startupMs,
      errors: window.streamspacePlayer.errors,
      stalls: window.streamspacePlayer.stalls,
      peers: document.getElementById('peers').textContent,
      startupShown: document.getElementById('startup').textContent
    }))
    const screenshot = `${prefix}-${i}.png`
    await page.screenshot({ path: screenshot })
    await page.close()
    return { url, played, ...state, consoleErrors, screenshot }
  }
  const results = await Promise.all(urls.map(play))
  console.log(JSON.stringify(results))
} finally {
  await browser.close()
}
