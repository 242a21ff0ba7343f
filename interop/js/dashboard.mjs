#!/usr/bin/env node
// Loads a node's dashboard in headless Chromium (Debian's, driven by playwright-core, pinned
// in package-lock.json), reads the figures it shows, sets the space offered with its control,
// and keeps a screenshot.
//
//   node dashboard.mjs URL NEW_QUOTA_GB SCREENSHOT.png
//
// Prints {"consoleErrors": [...], "shown": {...}, "afterOffer": "..."} as JSON.

import { chromium } from 'playwright-core'

const [url, gb, shot] = process.argv.slice(2)
if (shot == null) {
  console.error('usage: node dashboard.mjs URL NEW_QUOTA_GB SCREENSHOT.png')
  process.exit(2)
}
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium'
const browser = await chromium.launch({
  executablePath,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync']
})
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } })
  const consoleErrors = []
  page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text()) })
  page.on('pageerror', e => consoleErrors.push(String(e)))
  await page.goto(url)
  // The first refresh fills the figures.
  await page.waitForFunction(() => document.getElementById('quota').textContent !== '…', null, { timeout: 20000 })
  const text = async (id) => (await page.textContent(`#${id}`)).trim()
  const shown = {}
  for (const id of ['peer', 'quota', 'used', 'blocks', 'tier', 'peers', 'shards-served', 'payments']) {
    shown[id] = await text(id)
  }
  shown.pinned = await page.$$eval('#pinned li', lis => lis.map(li => li.textContent))
  await page.fill('#offer-gb', gb)
  await page.click('#offer button')
  await page.waitForFunction(() => document.getElementById('offer-result').textContent !== '', null, { timeout: 20000 })
  const afterOffer = await text('offer-result')
  await page.waitForFunction((q) => document.getElementById('quota').textContent === q, `${Number(gb).toFixed(2)} GB`, { timeout: 20000 })
  shown.quotaAfter = await text('quota')
  await page.screenshot({ path: shot, fullPage: true })
  console.log(JSON.stringify({ consoleErrors, shown, afterOffer }))
} finally {
  await browser.close()
}
