/**
 * @jest-environment node
 */
// The till page (examples/till, served by `wxpay serve` at /till/) in headless Chromium: set up
// with a till-scoped token, it shows the product's QR code; the simulator's phone scans that code
// and pays; the page turns to "已支付 / paid". (Run by examples/miniprogram's `npm test`.)
const { execFileSync } = require('child_process')
const http = require('http')
const { chromium } = require('playwright-core')

function call(method, url, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers: { 'content-type': 'application/json', ...headers } }, (res) => {
      let text = ''
      res.on('data', (c) => (text += c))
      res.on('end', () => resolve({ status: res.statusCode, text }))
    })
    req.on('error', reject)
    if (body !== undefined) req.write(JSON.stringify(body))
    req.end()
  })
}

const admin = { Authorization: `Bearer ${process.env.WXPAY_ADMIN_TOKEN}` }

// A till-scoped token, made the way an operator makes one (or the admin token on your own server).
function tillToken() {
  if (!process.env.WXPAY_CONFIG) return process.env.WXPAY_ADMIN_TOKEN
  const out = execFileSync(process.env.WXPAY_BIN, ['admin', 'token', 'add', `till-${Date.now()}`, '--role', 'till', '--config', process.env.WXPAY_CONFIG], {
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WXPAY_'))),
  })
  return out.toString().trim()
}

async function scanAndPay(user) {
  const link = await call('GET', `${process.env.WXPAY_URL}/admin/api/products/cola/link`, undefined, admin)
  expect(link.status).toBe(200)
  const answer = await call('POST', `${process.env.WXPAY_SIM_URL}/sim/phone/scan`, { user, url: link.text, action: 'pay' })
  const body = JSON.parse(answer.text)
  expect(body.errMsg).toBe('ok')
  return body.out_trade_no
}

let browser
beforeAll(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  })
})
afterAll(async () => {
  if (browser) await browser.close()
})

test('the till shows the QR code and turns to paid when the scanned order is paid', async () => {
  const token = tillToken()
  expect(token).toMatch(/^\S{16,}$/)
  // The till token opens nothing on the admin side.
  if (process.env.WXPAY_CONFIG) {
    const refused = await call('GET', `${process.env.WXPAY_URL}/admin/api/orders`, undefined, { Authorization: `Bearer ${token}` })
    expect(refused.status).toBe(403)
  }
  // A payment from before the code went up must not open the gate.
  await scanAndPay(`till-early-${Date.now()}`)

  const page = await browser.newPage({ viewport: { width: 800, height: 600 } })
  const errors = []
  page.on('pageerror', (e) => errors.push(e.message))
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()))
  await page.goto(`${process.env.WXPAY_URL}/till/#product=cola`)
  await page.waitForSelector('#setup:not([hidden])')
  expect(page.url()).not.toContain(token)
  await page.fill('#token', token)
  await page.click('button[type=submit]')
  await page.waitForSelector('#waiting:not([hidden]) #qr svg')
  expect(await page.textContent('#product-price')).toBe('¥3.00')
  expect(page.url()).not.toContain(token)

  // Two polls later it is still waiting: the earlier payment does not count.
  for (let i = 0; i < 2; i++) await page.waitForResponse((r) => r.url().includes('/latest-order'))
  expect(await page.isVisible('#waiting')).toBe(true)

  const orderNo = await scanAndPay(`till-customer-${Date.now()}`)
  await page.waitForSelector('#paid:not([hidden])', { timeout: 20000 })
  expect(await page.textContent('#paid-text')).toBe('已支付 / paid')
  expect(await page.textContent('#paid-order')).toBe(orderNo)
  expect(errors).toEqual([])
  await page.close()
})

test('a refused token sends the till back to its set-up form', async () => {
  const page = await browser.newPage()
  await page.goto(`${process.env.WXPAY_URL}/till/#product=cola`)
  await page.waitForSelector('#setup:not([hidden])')
  await page.fill('#token', 'wxpadm_not-a-real-token')
  await page.click('button[type=submit]')
  await page.waitForFunction(() => document.getElementById('setup-error').textContent.includes('refused'))
  expect(await page.isVisible('#waiting')).toBe(false)
  await page.close()
})
