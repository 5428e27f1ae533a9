// Starts the backend the pages talk to: a real `wxpay serve` in sandbox mode (its embedded WeChat
// simulator included), on free ports and a fresh SQLite file. Set WXPAY_URL (and WXPAY_SIM_URL,
// WXPAY_ADMIN_TOKEN) to test against one you started yourself instead.
const { spawn } = require('child_process')
const fs = require('fs')
const os = require('os')
const path = require('path')

const BANNER_BACKEND = 'wxpay merchant backend listening on '
const BANNER_SIM = 'sandbox mode: WeChat simulator on '
const ADMIN_TOKEN = 'miniprogram-test-admin-token'

function binary() {
  const bin = process.env.WXPAY_BIN || path.resolve(__dirname, '../../../target/debug/wxpay')
  if (!fs.existsSync(bin)) {
    throw new Error(`no wxpay binary at ${bin}: run \`cargo build\` at the repository root, or set WXPAY_BIN (or WXPAY_URL to use a running server)`)
  }
  return bin
}

module.exports = async function setup() {
  if (process.env.WXPAY_URL) {
    process.env.WXPAY_SIM_URL = process.env.WXPAY_SIM_URL || 'http://127.0.0.1:8090'
    return
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wxpay-miniprogram-'))
  const config = path.join(dir, 'wxpay.toml')
  fs.writeFileSync(
    config,
    [
      '[server]',
      'listen = "127.0.0.1:0"',
      `admin_token = "${ADMIN_TOKEN}"`,
      '[database]',
      `url = "sqlite://${path.join(dir, 'wxpay.db')}"`,
      '[simulator]',
      'enabled = true',
      'listen = "127.0.0.1:0"',
      '',
    ].join('\n'),
  )
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WXPAY_')))
  const child = spawn(binary(), ['serve', '--config', config], { env: { ...env, RUST_LOG: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  const started = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`wxpay serve did not start in 60 s:\n${out}`)), 60000)
    const seen = {}
    const onData = (chunk) => {
      out += chunk
      for (const line of out.split('\n')) {
        if (line.startsWith(BANNER_BACKEND)) seen.url = line.slice(BANNER_BACKEND.length).trim()
        if (line.startsWith(BANNER_SIM)) seen.sim = line.slice(BANNER_SIM.length).split(' ')[0].trim()
      }
      if (seen.url && seen.sim) {
        clearTimeout(timer)
        resolve(seen)
      }
    }
    child.stdout.on('data', onData)
    child.stderr.on('data', onData)
    child.on('exit', (code) => reject(new Error(`wxpay serve exited with ${code}:\n${out}`)))
  })
  process.env.WXPAY_URL = started.url
  process.env.WXPAY_SIM_URL = started.sim
  process.env.WXPAY_ADMIN_TOKEN = ADMIN_TOKEN
  process.env.WXPAY_CONFIG = config
  process.env.WXPAY_BIN = binary()
  globalThis.__WXPAY__ = { child, dir }
}
