// The merchant console (/admin/) in headless Chromium (Debian's; playwright-core never downloads
// a browser) against a real `wxpay serve` and its simulator. With WXPAY_SCREENSHOTS=DIR (`npm run
// screenshots`) it also saves the main pages at desktop and phone width into DIR.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('fs')
const path = require('path')
const { chromium } = require('playwright-core')
const { start, call } = require('./backend')

let backend
let browser
let owner
before(async () => {
  backend = await start({ operatorLimitFen: 100 })
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  })
  owner = backend.token('olivia', 'owner')
})
after(async () => {
  if (browser) await browser.close()
  if (backend) await backend.stop()
})

const shots = process.env.WXPAY_SCREENSHOTS
async function shot(page, name) {
  if (!shots) return
  fs.mkdirSync(shots, { recursive: true })
  const size = page.viewportSize()
  for (const [suffix, width, height] of [['desktop', 1280, 800], ['phone', 390, 844]]) {
    await page.setViewportSize({ width, height })
    await page.screenshot({ path: path.join(shots, `${name}-${suffix}.png`), fullPage: true })
  }
  await page.setViewportSize(size)
}

// A paid Native order: the simulator's phone scans the product's code and pays.
async function paidOrder(user) {
  const auth = { Authorization: `Bearer ${owner}` }
  const link = await call('GET', `${backend.url}/admin/api/products/cola/link`, undefined, auth)
  assert.equal(link.status, 200, link.text)
  const paid = await call('POST', `${backend.sim}/sim/phone/scan`, { user, url: link.text, action: 'pay' })
  const body = JSON.parse(paid.text)
  assert.equal(body.errMsg, 'ok', paid.text)
  for (let i = 0; i < 100; i++) {
    const d = JSON.parse((await call('GET', `${backend.url}/admin/api/orders/${body.out_trade_no}`, undefined, auth)).text)
    if (d.order.status === 'PAID') return { orderNo: body.out_trade_no, detail: d }
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`order ${body.out_trade_no} never became PAID`)
}

async function signIn(token, { width = 1280 } = {}) {
  const context = await browser.newContext({ viewport: { width, height: 800 }, acceptDownloads: true })
  const page = await context.newPage()
  const errors = []
  page.on('pageerror', (e) => errors.push(e.message))
  // Script errors and CSP violations (a refused status such as a wrong token's 401 is expected).
  page.on('console', (m) => m.type() === 'error' && /Content Security Policy/.test(m.text()) && errors.push(m.text()))
  page.errors = errors
  await page.goto(`${backend.url}/admin/`)
  assert.match(page.url(), /\/admin\/login$/)
  await page.fill('#token', token)
  await page.click('#sign-in')
  await page.waitForURL(/\/admin\/orders$/)
  assert.ok(!page.url().includes(token), 'no secret in the URL')
  return page
}

test('sign in and out; a wrong token is refused', async () => {
  const page = await signIn(owner)
  assert.match(await page.textContent('.user'), /olivia · owner/)
  await page.click('#logout')
  await page.waitForURL(/\/admin\/login$/)
  await shot(page, 'login')
  await page.goto(`${backend.url}/admin/orders`)
  assert.match(page.url(), /\/admin\/login$/, 'signed out: back to the sign-in form')
  await page.fill('#token', 'wxpadm_wrong')
  await page.click('#sign-in')
  assert.match(await page.textContent('#login-error'), /令牌无效/)
  assert.deepEqual(page.errors, [])
  await page.context().close()
})

test('a form whose CSRF value was tampered with is refused', async () => {
  const { orderNo } = await paidOrder(`csrf-${Date.now()}`)
  const page = await signIn(owner)
  await page.goto(`${backend.url}/admin/orders/${orderNo}`)
  await page.$eval('form[action$="/ship"] input[name=csrf]', (e) => (e.value = 'forged'))
  await page.click('#ship')
  assert.match(await page.textContent('#error-message'), /CSRF/)
  await page.goto(`${backend.url}/admin/orders/${orderNo}`)
  assert.equal(await page.textContent('#fulfilment'), 'PENDING', 'not shipped')
  await page.click('#ship')
  await page.waitForSelector('#fulfilment:text("SHIPPED")')
  await page.context().close()
})

test('role limits: a viewer has no actions, an operator refunds up to the limit only', async () => {
  const { orderNo } = await paidOrder(`roles-${Date.now()}`)
  const viewer = await signIn(backend.token(`vera-${Date.now()}`, 'viewer'))
  await viewer.goto(`${backend.url}/admin/orders/${orderNo}`)
  assert.equal(await viewer.$('#refund'), null)
  assert.equal(await viewer.$('#ship'), null)
  await viewer.context().close()

  const operator = await signIn(backend.token(`otto-${Date.now()}`, 'operator'))
  await operator.goto(`${backend.url}/admin/orders/${orderNo}`)
  await operator.fill('#refund-amount', '1.50')
  await operator.fill('#refund-reason', '破损')
  await operator.click('#refund')
  assert.match(await operator.textContent('#error-message'), /operator 单笔最多退款 ¥1.00/)
  await operator.context().close()
})

test('searching orders by number, status and product', async () => {
  const { orderNo, detail } = await paidOrder(`search-${Date.now()}`)
  const page = await signIn(owner)
  await page.fill('#q', orderNo)
  await page.click('#search')
  await page.waitForURL(/q=/)
  assert.equal(await page.textContent('#total-count'), '1')
  assert.deepEqual(await page.$$eval('tr.order-row a', (as) => as.map((a) => a.textContent)), [orderNo])
  await page.fill('#q', detail.order.transaction_id)
  await page.click('#search')
  await page.waitForURL(new RegExp(`q=${detail.order.transaction_id}`))
  assert.equal(await page.textContent('#total-count'), '1')
  await page.fill('#q', '')
  await page.selectOption('#status', 'CLOSED')
  await page.click('#search')
  await page.waitForURL(/status=CLOSED/)
  assert.ok(await page.$('#no-orders'))
  await page.selectOption('#status', '')
  await page.fill('#product', 'cola')
  await page.click('#search')
  await page.waitForURL(/product=cola/)
  assert.ok(Number(await page.textContent('#total-count')) >= 1)
  await page.context().close()
})

test("an order's timeline after a duplicate and a forged notification", async () => {
  const { orderNo, detail } = await paidOrder(`timeline-${Date.now()}`)
  const raw = detail.notifications.find((n) => n.kind === 'pay').raw_body
  assert.equal((await call('POST', `${backend.url}/wxpay/notify`, raw)).status, 200, 'duplicate')
  const forged = raw.replace(/<total_fee>(<!\[CDATA\[)?\d+/, (m) => m.replace(/\d+$/, '1'))
  assert.notEqual(forged, raw)
  assert.equal((await call('POST', `${backend.url}/wxpay/notify`, forged)).status, 200)
  const page = await signIn(owner)
  await page.goto(`${backend.url}/admin/orders/${orderNo}`)
  const pay = page.locator('.tl-notification:has(code:text-is("pay"))')
  assert.equal(await pay.count(), 3)
  assert.equal(await pay.locator('.flag.bad').count(), 1, 'the forged one is not verified')
  assert.equal(await pay.locator('.flag.ok').count(), 2)
  assert.ok((await page.locator('.tl-event code.kind').allTextContents()).includes('order.paid'))
  await shot(page, 'order')
  await page.context().close()
})

test('a partial refund from the order page ends SUCCESS through the simulator', async () => {
  const { orderNo, detail } = await paidOrder(`refund-${Date.now()}`)
  const page = await signIn(owner)
  await page.goto(`${backend.url}/admin/orders/${orderNo}`)
  const amount = detail.order.amount_fen
  assert.equal(await page.textContent('#refundable'), `¥${(amount / 100).toFixed(2)}`)
  await page.fill('#refund-amount', '1.00')
  await page.fill('#refund-reason', '少发一件')
  await page.click('#refund')
  await page.waitForURL(new RegExp(`/admin/orders/${orderNo}$`))
  for (let i = 0; i < 100; i++) {
    const status = await page.locator('.refund-status').first().textContent()
    if (status === 'SUCCESS') break
    await new Promise((r) => setTimeout(r, 200))
    await page.reload()
  }
  assert.equal(await page.locator('.refund-status').first().textContent(), 'SUCCESS')
  assert.equal(await page.textContent('#refunded'), '¥1.00')
  assert.equal(await page.textContent('#refundable'), `¥${((amount - 100) / 100).toFixed(2)}`)
  assert.equal(await page.textContent('#order-status'), 'PARTIALLY_REFUNDED')
  await page.context().close()
})

test('replaying a verified notification changes nothing twice', async () => {
  const { orderNo } = await paidOrder(`replay-${Date.now()}`)
  const page = await signIn(owner)
  await page.goto(`${backend.url}/admin/notifications?kind=pay&verified=yes&outcome=applied`)
  const row = page.locator('.inbox-row', { has: page.locator(`a:text("${orderNo}")`) })
  assert.equal(await row.count(), 1)
  await row.locator('.replay').click()
  await page.waitForURL(/\/admin\/notifications$/)
  await page.goto(`${backend.url}/admin/notifications?kind=pay&outcome=duplicate`)
  assert.equal(await page.locator('.inbox-row', { has: page.locator(`a:text("${orderNo}")`) }).count(), 1)
  await shot(page, 'notifications')
  await page.goto(`${backend.url}/admin/orders/${orderNo}`)
  assert.equal(await page.textContent('#order-status'), 'PAID')
  const paidEvents = (await page.locator('.tl-event code.kind').allTextContents()).filter((k) => k === 'order.paid')
  assert.equal(paidEvents.length, 1, 'applied once')
  await page.context().close()
})

test('resending a dead-lettered webhook', async () => {
  backend.hooks.accept = false
  const { orderNo } = await paidOrder(`hook-${Date.now()}`)
  const page = await signIn(owner)
  for (let i = 0; i < 100; i++) {
    await page.goto(`${backend.url}/admin/orders/${orderNo}`)
    if (await page.$('.tl-webhook .resend')) break
    await new Promise((r) => setTimeout(r, 200))
  }
  backend.hooks.accept = true
  await page.click('.tl-webhook .resend')
  for (let i = 0; i < 100; i++) {
    if ((await page.locator('.tl-webhook .flag.ok').count()) > 0) break
    await new Promise((r) => setTimeout(r, 200))
    await page.reload()
  }
  assert.match(await page.locator('.tl-webhook .flag.ok').first().textContent(), /已送达/)
  await page.goto(`${backend.url}/admin/webhooks`)
  assert.equal(await page.$(`.dead-row a:text("${orderNo}")`), null, 'no longer a dead letter')
  await page.goto(`${backend.url}/admin/dashboard`)
  assert.notEqual(await page.textContent('#today-paid'), '¥0.00')
  await shot(page, 'dashboard')
  await page.context().close()
})

test('CSV export content', async () => {
  const { orderNo, detail } = await paidOrder(`csv-${Date.now()}`)
  const page = await signIn(owner)
  await page.fill('#q', orderNo)
  await page.click('#search')
  await page.waitForURL(/q=/)
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#csv')])
  assert.match(download.suggestedFilename(), /^orders-\d{8}-\d{6}\.csv$/)
  const bytes = fs.readFileSync(await download.path())
  assert.deepEqual([...bytes.subarray(0, 3)], [0xef, 0xbb, 0xbf], 'UTF-8 BOM')
  const lines = bytes.subarray(3).toString('utf8').trim().split('\r\n')
  assert.equal(lines.length, 2)
  assert.match(lines[0], /^order_no,transaction_id,openid,status/)
  const fields = lines[1].split(',')
  assert.equal(fields[0], orderNo)
  assert.equal(fields[1], detail.order.transaction_id)
  assert.equal(fields[3], 'PAID')
  assert.equal(fields[5], (detail.order.amount_fen / 100).toFixed(2))
  await page.context().close()
})

test('creating a product and seeing it on the QR sheet', async () => {
  const page = await signIn(owner)
  await page.click('text=商品')
  await page.waitForURL(/\/admin\/products$/)
  const id = `tea${Date.now() % 100000}`
  await page.fill('#new-id', id)
  await page.fill('#new-name', '绿茶')
  await page.fill('#new-price', '4.50')
  await page.click('#create')
  await page.waitForSelector(`#product-${id}`)
  await shot(page, 'products')
  await page.click('#sheet')
  await page.waitForURL(/\/admin\/products\/sheet$/)
  const label = page.locator(`.label[data-product="${id}"]`)
  assert.equal(await label.locator('.price').textContent(), '¥4.50')
  assert.equal(await label.locator('.name').textContent(), '绿茶')
  assert.equal(await label.locator('.how').textContent(), '请使用微信扫一扫')
  assert.equal(await label.locator('.qr svg').count(), 1)
  assert.ok(await page.$('#print'), 'a print button')
  await shot(page, 'qr-sheet')
  assert.deepEqual(page.errors, [])
  await page.context().close()
})

test('the English switch and a phone-width layout', async () => {
  const page = await signIn(owner, { width: 390 })
  await shot(page, 'orders')
  await page.click('text=English')
  await page.waitForSelector('h1:text("Orders")')
  const scroll = await page.evaluate(() => document.documentElement.scrollWidth)
  assert.ok(scroll <= 390, `no horizontal scrolling at phone width (${scroll}px)`)
  await page.click('text=中文')
  await page.waitForSelector('h1:text("订单")')
  await page.context().close()
})

// Beijing's calendar day of an instant (yyyy-mm-dd).
function beijingDay(at) {
  return new Date(at.getTime() + 8 * 3600 * 1000).toISOString().slice(0, 10)
}

// Last: it moves the (simulated, shared) clock to the next morning, which signs everyone out.
test('the daily reconciliation: a changed amount shows as a difference, an operator resolves it with a note, a viewer may not', async () => {
  const auth = { Authorization: `Bearer ${owner}` }
  const changed = await paidOrder(`recon-changed-${Date.now()}`)
  await paidOrder(`recon-clean-${Date.now()}`)
  // WeChat's bill settles one fen less for the first order.
  const faults = { orders: { [changed.orderNo]: { bill_amount_delta_fen: -1 } } }
  assert.equal((await call('POST', `${backend.sim}/sim/faults`, faults)).status, 200)
  // To 10:05 the next morning (Beijing): the daily job fetches the bill of the day.
  const now = new Date(JSON.parse((await call('GET', `${backend.sim}/sim/clock`)).text).now)
  const day = beijingDay(now)
  const nextMorning = Date.parse(`${day}T10:05:00+08:00`) + 24 * 3600 * 1000
  const advance = Math.ceil((nextMorning - now.getTime()) / 1000)
  assert.equal((await call('POST', `${backend.sim}/sim/clock`, { advance_secs: advance })).status, 200)
  let detail
  for (let i = 0; i < 150; i++) {
    const r = await call('GET', `${backend.url}/admin/api/reconciliations/${day}`, undefined, auth)
    if (r.status === 200 && JSON.parse(r.text).status !== 'pending') {
      detail = JSON.parse(r.text)
      break
    }
    await new Promise((r) => setTimeout(r, 200))
  }
  assert.ok(detail, `the daily job reconciled ${day}`)
  assert.equal(detail.status, 'differences')
  const mismatch = detail.differences.find((d) => d.kind === 'amount_mismatch' && d.order_no === changed.orderNo)
  assert.ok(mismatch, JSON.stringify(detail.differences))
  assert.equal(mismatch.resolved, false)

  const viewer = await signIn(backend.token(`vic-${Date.now()}`, 'viewer'))
  await viewer.click('text=对账')
  await viewer.waitForURL(/\/admin\/reconciliations$/)
  const row = viewer.locator(`tr.day-row[data-date="${day}"]`)
  assert.equal(await row.locator('.status').textContent(), 'differences')
  assert.match(await row.locator('.diff-count').textContent(), /未处理/)
  await row.locator('a').click()
  await viewer.waitForURL(new RegExp(`/admin/reconciliations/${day}$`))
  assert.equal(await viewer.locator('form.resolve').count(), 0, 'a viewer gets no resolve form')
  const csrf = await viewer.getAttribute('form[action="/admin/logout"] input[name=csrf]', 'value')
  const refused = await viewer.request.post(`${backend.url}/admin/reconciliations/${day}/differences/${mismatch.id}/resolve`, {
    form: { csrf, note: 'viewer tries' },
    maxRedirects: 0,
  })
  assert.equal(refused.status(), 403)
  await viewer.context().close()

  const operatorName = `ola-${Date.now()}`
  const operator = await signIn(backend.token(operatorName, 'operator'))
  await operator.goto(`${backend.url}/admin/reconciliations/${day}`)
  const card = operator.locator(`#difference-${mismatch.id}`)
  assert.equal(await card.locator('code.kind').textContent(), 'amount_mismatch')
  assert.equal(await card.locator(`a[href="/admin/orders/${changed.orderNo}"]`).count(), 1)
  // The note is required (the browser's own check, then the server's, naming the field).
  const opCsrf = await card.locator('input[name=csrf]').getAttribute('value')
  const empty = await operator.request.post(`${backend.url}/admin/reconciliations/${day}/differences/${mismatch.id}/resolve`, {
    form: { csrf: opCsrf, note: ' ' },
    maxRedirects: 0,
  })
  assert.equal(empty.status(), 400)
  assert.match(await empty.text(), /处理说明（note）不能为空/)
  await card.locator('.resolve-note').fill('账单少 1 分：已联系微信支付客服')
  await card.locator('.resolve-button').click()
  await operator.waitForURL(new RegExp(`/admin/reconciliations/${day}#difference-${mismatch.id}$`))
  const resolved = operator.locator(`#difference-${mismatch.id}`)
  assert.equal(await resolved.locator('.resolved-by').textContent(), operatorName)
  assert.equal(await resolved.locator('.note').textContent(), '账单少 1 分：已联系微信支付客服')
  assert.equal(await resolved.locator('form.resolve').count(), 0)
  await shot(operator, 'reconciliation')
  const after = JSON.parse((await call('GET', `${backend.url}/admin/api/reconciliations/${day}`, undefined, auth)).text)
  const now2 = after.differences.find((d) => d.id === mismatch.id)
  assert.equal(now2.resolved, true)
  assert.equal(now2.resolved_by, operatorName)
  const audit = JSON.parse((await call('GET', `${backend.url}/admin/api/audit?subject=reconciliation:${day}`, undefined, auth)).text)
  assert.equal(audit.length, 1)
  assert.equal(audit[0].action, 'reconciliation.difference_resolved')
  assert.equal(audit[0].actor, operatorName)

  await operator.goto(`${backend.url}/admin/reconciliations`)
  await shot(operator, 'reconciliations')
  // The dashboard the next morning: yesterday's net after fees, as the bill settles it.
  await operator.goto(`${backend.url}/admin/dashboard`)
  const net = after.net_income_fen
  assert.equal(await operator.textContent('#net-yesterday'), `¥${(net / 100).toFixed(2)}`)
  assert.match(await operator.textContent('#lag-max'), /s$/)
  await shot(operator, 'dashboard')
  assert.deepEqual(operator.errors, [])
  await operator.context().close()
})
