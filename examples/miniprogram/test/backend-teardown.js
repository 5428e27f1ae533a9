module.exports = async function teardown() {
  const serve = globalThis.__WXPAY__
  if (serve) await serve.stop()
}
