// The one way this mini-program talks to the wxpay backend.
//
// * Every call carries `Authorization: Bearer <token>`; the token comes from `wx.login` →
//   `POST /api/mp/login` and is kept in storage.
// * `SESSION_EXPIRED` / `UNAUTHORIZED`: log in again once and repeat the call.
// * `WECHAT_UNAVAILABLE` (the backend could not reach WeChat): retried with back-off; the backend
//   keeps the order, so a repeat is safe.
// * Anything else rejects with an `ApiError` whose `text` is for the customer (Chinese) and whose
//   `code` / `message` are the backend's own.
const { textFor } = require('./errors')

const TOKEN_KEY = 'wxpay_token'

// Waits between attempts when WeChat is unavailable (ms). Exported so tests can shorten them.
const retry = { delaysMs: [500, 1000, 2000] }

class ApiError extends Error {
  constructor(code, message, status) {
    super(message || code)
    this.code = code
    this.status = status
    this.text = textFor(code)
  }
}

function baseUrl() {
  return getApp().globalData.baseUrl
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

function rawRequest(method, path, data, token) {
  return new Promise((resolve, reject) => {
    const header = { 'content-type': 'application/json' }
    if (token) header.Authorization = `Bearer ${token}`
    wx.request({
      url: baseUrl() + path,
      method,
      data,
      header,
      success: (res) => resolve(res),
      fail: (err) => reject(new ApiError('NETWORK_ERROR', err && err.errMsg, 0)),
    })
  })
}

function wxLogin() {
  return new Promise((resolve, reject) => {
    wx.login({
      success: (res) => resolve(res.code),
      fail: (err) => reject(new ApiError('NETWORK_ERROR', err && err.errMsg, 0)),
    })
  })
}

async function login() {
  wx.removeStorageSync(TOKEN_KEY)
  const code = await wxLogin()
  const res = await rawRequest('POST', '/api/mp/login', { code })
  if (res.statusCode !== 200) throw toError(res)
  wx.setStorageSync(TOKEN_KEY, res.data.token)
  return res.data.token
}

function toError(res) {
  const body = res.data && typeof res.data === 'object' ? res.data : {}
  return new ApiError(body.code || `HTTP_${res.statusCode}`, body.message, res.statusCode)
}

async function request(method, path, data) {
  let token = wx.getStorageSync(TOKEN_KEY) || (await login())
  let relogged = false
  for (let attempt = 0; ; attempt++) {
    const res = await rawRequest(method, path, data, token)
    if (res.statusCode >= 200 && res.statusCode < 300) return res.data
    const err = toError(res)
    if ((err.code === 'SESSION_EXPIRED' || err.code === 'UNAUTHORIZED') && !relogged) {
      relogged = true
      token = await login()
      continue
    }
    if (err.code === 'WECHAT_UNAVAILABLE' && attempt < retry.delaysMs.length) {
      await sleep(retry.delaysMs[attempt])
      continue
    }
    throw err
  }
}

module.exports = {
  ApiError,
  retry,
  login,
  get: (path) => request('GET', path),
  post: (path, data) => request('POST', path, data || {}),
  TOKEN_KEY,
}
