// Renders the page snapshots the tests wrote (WXPAY_SNAPSHOT_DIR) to PNGs with Chromium:
//   npm run screenshots   (needs Debian's chromium; CHROMIUM=/path/to/chrome to use another)
const fs = require('fs')
const path = require('path')
const { chromium } = require('playwright-core')

async function main() {
  const from = process.env.WXPAY_SNAPSHOT_DIR
  const to = path.resolve(__dirname, '../../../docs/miniprogram')
  fs.mkdirSync(to, { recursive: true })
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  })
  const page = await browser.newPage({ viewport: { width: 375, height: 667 }, deviceScaleFactor: 1 })
  for (const file of fs.readdirSync(from).filter((f) => f.endsWith('.html')).sort()) {
    await page.goto('file://' + path.join(from, file))
    const out = path.join(to, file.replace(/\.html$/, '.png'))
    await page.screenshot({ path: out })
    console.log(out)
  }
  await browser.close()
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
