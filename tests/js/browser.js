// Run a script inside a page of headless Chromium (Debian's `chromium`,
// driven by puppeteer-core; no browser is downloaded).
//
//   node browser.js PAGE_SCRIPT.js 'JSON_ARGS' [SCRIPT_TAG.js ...]
//
// PAGE_SCRIPT.js holds one expression: an async function (args) that runs in
// the page and calls `report(event, fields)` to emit events. SCRIPT_TAG files
// (e.g. a client library's browser bundle) are loaded into the page first.
// The page is an empty document served on 127.0.0.1 by this script (a real
// origin, so storage and cookies work). Emits {"event":"browser","version":…}
// once Chromium is up, the page's own
// events, and {"event":"console","text":…} for page console messages.
// Chromium: $PUBMESH_CHROMIUM, else /usr/bin/chromium.
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');
const puppeteer = require('puppeteer-core');
const { report, reportFailures } = require('./report');

reportFailures();

async function main() {
  const [pageScript, argsJson = '{}', ...tags] = process.argv.slice(2);
  if (!pageScript) {
    report('fatal', { error: 'usage: browser.js PAGE_SCRIPT.js JSON_ARGS [SCRIPT_TAG.js ...]' });
    process.exit(2);
  }
  const executablePath = process.env.PUBMESH_CHROMIUM || '/usr/bin/chromium';
  // No background traffic: the machine's network is closed beyond loopback.
  const args = [
    '--disable-gpu',
    '--disable-dev-shm-usage',
    '--no-first-run',
    '--disable-quic',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ];
  // Chromium's sandbox refuses to run as root.
  if (process.getuid && process.getuid() === 0) args.push('--no-sandbox');
  // The profile: $PUBMESH_CHROMIUM_PROFILE (the Rust harness removes it even
  // if this script is killed), else a fresh temporary directory.
  const userDataDir =
    process.env.PUBMESH_CHROMIUM_PROFILE ||
    fs.mkdtempSync(path.join(require('os').tmpdir(), 'pubmesh-chromium-'));
  // pipe: Chromium talks over fds inherited from node, so it exits with node
  // even when node is killed (no orphaned browsers after a failed test).
  // Chromium's own temporary files go under the profile, removed on exit.
  const browser = await puppeteer.launch({
    executablePath,
    headless: true,
    pipe: true,
    args,
    userDataDir,
    env: { ...process.env, TMPDIR: userDataDir },
  });
  report('browser', { version: await browser.version() });
  const closeAndExit = async (code) => {
    await browser.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
    process.exit(code);
  };
  process.stdin.on('end', () => closeAndExit(0));
  process.stdin.resume();
  process.on('SIGTERM', () => closeAndExit(0));

  // A real origin (not about:blank, whose opaque origin has no storage):
  // an empty page served on loopback by this script.
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><meta charset="utf-8"><title>pubmesh test page</title>');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const page = await browser.newPage();
  page.on('console', (msg) => report('console', { text: msg.text() }));
  page.on('pageerror', (err) => report('page_error', { error: String(err) }));
  await page.exposeFunction('report', (event, fields) => report(event, fields || {}));
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  for (const tag of tags) {
    await page.addScriptTag({ path: path.resolve(tag) });
  }
  const source = fs.readFileSync(pageScript, 'utf8');
  await page.evaluate(`(${source})(${argsJson})`);
}

main().catch((err) => {
  report('fatal', { error: String((err && err.stack) || err) });
  process.exit(1);
});
