// Runs the mini-program's pages for real: WeChat's component-test tooling (miniprogram-simulate
// with j-component) renders them in jsdom, and a `wx` object stands in for the WeChat client:
//
// * `wx.request` makes real HTTP calls to the `wxpay serve` the test run started;
// * `wx.login` and `wx.requestPayment` go to the simulator's phone API (`/sim/phone/login`,
//   `/sim/phone/pay`), so the code, the payment and its notification are the simulator's;
// * storage, navigation and toasts are recorded for the test to look at.
const http = require('http')
const path = require('path')
const simulate = require('miniprogram-simulate')

const ROOT = path.resolve(__dirname, '../miniprogram')
const SANDBOX_APPID = 'wxd930ea5d5a258f4f'

function httpJson(method, url, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body)
    const req = http.request(url, { method, headers: { 'content-type': 'application/json', ...headers } }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c) => (text += c))
      res.on('end', () => {
        let data = text
        try { data = JSON.parse(text) } catch (_) { /* not JSON: keep the text, as wx.request does */ }
        resolve({ statusCode: res.statusCode, data, header: res.headers })
      })
    })
    req.on('error', reject)
    if (payload !== undefined) req.write(payload)
    req.end()
  })
}

const sim = (p) => process.env.WXPAY_SIM_URL + p
const backend = (p) => process.env.WXPAY_URL + p

async function until(what, check, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

// A page's definition runs once per test file (Node caches the module); renders are per phone.
const loaded = new Map()
function loadPage(name) {
  if (!loaded.has(name)) {
    // WeChat's own template compiler (wcc, shipped with miniprogram-simulate) compiles the .wxml.
    loaded.set(name, simulate.load(path.join(ROOT, 'pages', name, 'index'), { compiler: 'official', rootPath: ROOT }))
  }
  return loaded.get(name)
}

/** One user's phone running the mini-program. */
class Phone {
  constructor(user) {
    this.user = user
    this.storage = new Map()
    this.paymentActions = [] // at each payment sheet: 'pay' (default), 'cancel' or 'claim-ok'
    this.paymentCalls = [] // the parameters wx.requestPayment received
    this.logins = 0
    this.exchanges = [] // {method, path, statusCode, data} of every wx.request
    this.navigations = []
    this.toasts = []
    this.onResponse = null // test hook, called with each exchange before the page sees it
  }

  install() {
    const phone = this
    let app
    global.App = (definition) => { app = definition }
    jest.isolateModules(() => require(path.join(ROOT, 'app.js')))
    app.globalData.baseUrl = process.env.WXPAY_URL
    global.getApp = () => app
    this.app = app
    global.wx = {
      getStorageSync: (k) => (phone.storage.has(k) ? phone.storage.get(k) : ''),
      setStorageSync: (k, v) => phone.storage.set(k, v),
      removeStorageSync: (k) => phone.storage.delete(k),
      login({ success, fail }) {
        phone.logins += 1
        httpJson('POST', sim('/sim/phone/login'), { appid: SANDBOX_APPID, user: phone.user })
          .then((res) => (res.data.code ? success({ code: res.data.code, errMsg: 'login:ok' }) : fail({ errMsg: 'login:fail' })))
          .catch(() => fail({ errMsg: 'login:fail network' }))
      },
      request({ url, method = 'GET', data, header, success, fail }) {
        httpJson(method, url, method === 'GET' ? undefined : data, header)
          .then(async (res) => {
            const exchange = { method, path: url.slice(process.env.WXPAY_URL.length), statusCode: res.statusCode, data: res.data }
            phone.exchanges.push(exchange)
            if (phone.onResponse) await phone.onResponse(exchange)
            success(res)
          })
          .catch((e) => fail({ errMsg: `request:fail ${e.message}` }))
      },
      requestPayment(options) {
        const { success, fail, complete, ...params } = options
        phone.paymentCalls.push(params)
        const action = phone.paymentActions.shift() || 'pay'
        // A phone that claims success without paying (a tampered or buggy client).
        if (action === 'claim-ok') return success({ errMsg: 'requestPayment:ok' })
        httpJson('POST', sim('/sim/phone/pay'), { ...params, user: phone.user, appid: SANDBOX_APPID, action })
          .then((res) => (res.data.errMsg === 'requestPayment:ok' ? success(res.data) : fail(res.data)))
          .catch((e) => fail({ errMsg: `requestPayment:fail ${e.message}` }))
      },
      navigateTo: ({ url }) => phone.navigations.push(url),
      redirectTo: ({ url }) => phone.navigations.push(url),
      showToast: ({ title }) => phone.toasts.push(title),
    }
  }

  /** Opens a page (`catalogue`, `checkout`, `result`, `orders`) and runs its onLoad. */
  async open(name, query = {}, beforeLoad = () => {}) {
    const id = loadPage(name)
    const page = simulate.render(id)
    page.attach(document.createElement('parent-wrapper'))
    beforeLoad(page.instance)
    await page.instance.onLoad(query)
    return page
  }

  /** Taps the element with this id, as a finger would. */
  async tap(page, id) {
    const el = page.querySelector(`#${id}`)
    if (!el) throw new Error(`no #${id} on the page:\n${page.dom.innerHTML}`)
    el.dispatchEvent('tap')
    await simulate.sleep(0)
  }

  /** The query of the last navigation to `page`, once there is one. */
  async navigatedTo(name) {
    const url = await until(`a navigation to ${name}`, () => this.navigations.find((u) => u.startsWith(`/pages/${name}/`)))
    this.navigations = this.navigations.filter((u) => u !== url)
    const query = {}
    for (const pair of (url.split('?')[1] || '').split('&').filter(Boolean)) {
      const [k, v] = pair.split('=')
      query[k] = decodeURIComponent(v)
    }
    return query
  }
}

// What the WeChat client's built-in components look like, roughly: enough for a screenshot.
const BASE_CSS = `
  body { margin: 0; width: 375px; min-height: 667px; background: #f6f6f6; font: 15px/1.5 "Noto Sans CJK SC", sans-serif; color: #222; }
  .bar { background: #fff; text-align: center; font-weight: bold; padding: 12px 0; border-bottom: 1px solid #eee; }
  wx-view, wx-text { display: block; }
  wx-button { display: block; text-align: center; border-radius: 6px; padding: 8px 14px; background: #f2f2f2; font-weight: bold; }
  .main--row wx-button { display: inline-block; padding: 2px 12px; font-size: 13px; }
`

/**
 * With WXPAY_SNAPSHOT_DIR set, writes the page as rendered now (its DOM and compiled WXSS) to
 * `<dir>/<name>.html`; `npm run screenshots` turns those into the PNGs of docs/.
 */
function snapshot(page, name, title) {
  const dir = process.env.WXPAY_SNAPSHOT_DIR
  if (!dir) return
  const fs = require('fs')
  fs.mkdirSync(dir, { recursive: true })
  const styles = [...document.head.querySelectorAll('style')].map((s) => s.outerHTML).join('\n')
  // app.wxss as the harness scopes page styles: classes get the `main--` prefix, tags `wx-`.
  const appWxss = fs.readFileSync(path.join(ROOT, 'app.wxss'), 'utf8')
    .replace(/\.([A-Za-z][\w-]*)/g, '.main--$1')
    .replace(/(^|[\s,}])page(?=[\s{,])/g, '$1body')
    .replace(/(^|[\s,}])button(?=[\s.{,])/g, '$1wx-button')
  const html = `<!doctype html><meta charset="utf-8"><style>${BASE_CSS}${appWxss}</style>${styles}` +
    `<body><div class="bar">${title}</div>${page.dom.innerHTML}</body>`
  fs.writeFileSync(path.join(dir, `${name}.html`), html)
}

function text(page, id) {
  const el = page.querySelector(`#${id}`)
  return el ? el.dom.textContent.trim() : null
}

module.exports = { Phone, httpJson, sim, backend, until, text, snapshot, ROOT }
