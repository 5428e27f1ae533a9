const fs = require('fs')

module.exports = async function teardown() {
  const started = globalThis.__WXPAY__
  if (!started) return
  started.child.kill('SIGTERM')
  await new Promise((resolve) => {
    const timer = setTimeout(() => { started.child.kill('SIGKILL'); resolve() }, 10000)
    started.child.on('exit', () => { clearTimeout(timer); resolve() })
  })
  fs.rmSync(started.dir, { recursive: true, force: true })
}
