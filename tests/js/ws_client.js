// A WebSocket client built on the `ws` package.
//
//   node ws_client.js URL
//
// Reports {"event":"open"}, {"event":"frame","text":…,"data":<parsed JSON or null>},
// {"event":"binary","base64":…}, {"event":"close","code":N,"reason":…} and
// {"event":"error","error":…}. Each line written to stdin is sent as a text frame.
'use strict';

const WebSocket = require('ws');
const { report, reportFailures, onStdinLines } = require('./report');

reportFailures();
const url = process.argv[2];
if (!url) {
  report('fatal', { error: 'usage: ws_client.js URL' });
  process.exit(2);
}

const ws = new WebSocket(url);
ws.on('open', () => report('open'));
ws.on('message', (data, isBinary) => {
  if (isBinary) {
    report('binary', { base64: Buffer.from(data).toString('base64') });
    return;
  }
  const text = data.toString('utf8');
  let parsed = null;
  try {
    parsed = JSON.parse(text);
  } catch (_) {
    parsed = null;
  }
  report('frame', { text, data: parsed });
});
ws.on('close', (code, reason) => {
  report('close', { code, reason: reason.toString('utf8') });
  process.exit(0);
});
ws.on('error', (err) => report('error', { error: String(err.message || err) }));
onStdinLines((line) => ws.send(line));
