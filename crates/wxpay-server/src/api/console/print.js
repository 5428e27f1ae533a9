// The QR sheet's print button (no inline scripts under the console's CSP).
document.getElementById('print').addEventListener('click', () => window.print())
