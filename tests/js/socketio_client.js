// The official Socket.IO client under node over WebSocket only:
// socket.io-client 4 (Engine.IO 4, Socket.IO v5) or 2 (Engine.IO 3, v4).
//
//   node socketio_client.js URL 4|2 ['{"auth":{…},"events":["name",…],"path":"/socket.io",
//                                      "transports":["websocket"],"query":{…},"reconnection":false}']
//
// URL may name a namespace (http://host:port/admin). Reports: connect {id,
// recovered, transport}, upgrade {transport}, connect_error {message},
// disconnect {reason},
// event {name, args} (Buffers as {"base64":…}; v4 reports every event,
// v2 those listed in "events"), ack {name, args}. Stdin commands:
// {"emit":EVENT,"args":[…],"ack":true|false,"timeout":MS}; an arg {"base64":…}
// is sent as binary; {"disconnect":true} and {"connect":true};
// {"pause":true} / {"resume":true}: stop / start reading the WebSocket's
// TCP socket (a client that does not keep up), answered by paused {} /
// resumed {};
// {"uri":URL}: reconnect (when "reconnection" is on) to URL rather than the
// first node, as a load balancer would after that node died. With a
// timeout, an ack that does not come is reported as ack {name, error}.
'use strict';

const { report, reportFailures, onStdinLines } = require('./report');

reportFailures();
const [url, version, optionsJson = '{}'] = process.argv.slice(2);
const options = JSON.parse(optionsJson);

const out = (arg) =>
  Buffer.isBuffer(arg) || arg instanceof ArrayBuffer
    ? { base64: Buffer.from(arg).toString('base64') }
    : arg;
const into = (arg) => (arg && typeof arg === 'object' && arg.base64 !== undefined ? Buffer.from(arg.base64, 'base64') : arg);

const common = {
  transports: options.transports || ['websocket'],
  reconnection: options.reconnection || false,
  reconnectionDelay: options.reconnectionDelay,
  reconnectionDelayMax: options.reconnectionDelayMax,
  path: options.path || '/socket.io',
  query: options.query,
};
let socket;
if (version === '4') {
  const { io } = require('socket.io-client');
  socket = io(url, { ...common, auth: options.auth });
  socket.onAny((event, ...args) => report('event', { name: event, args: args.map(out) }));
} else if (version === '2') {
  const io = require('socket.io-client-v2');
  socket = io(url, common);
  for (const name of options.events || []) {
    socket.on(name, (...args) => report('event', { name, args: args.map(out) }));
  }
} else {
  report('fatal', { error: 'version must be 4 or 2' });
  process.exit(2);
}
socket.on('connect', () =>
  report('connect', {
    id: socket.id,
    recovered: socket.recovered === true,
    transport: socket.io.engine && socket.io.engine.transport ? socket.io.engine.transport.name : null,
  }),
);
socket.io.on('open', () => {
  socket.io.engine.on('upgrade', (t) => report('upgrade', { transport: t.name }));
});
socket.on('connect_error', (err) => report('connect_error', { message: String((err && err.message) || err) }));
socket.on('error', (err) => report('error', { message: String((err && err.message) || err) }));
socket.on('disconnect', (reason) => report('disconnect', { reason }));

onStdinLines((line) => {
  const cmd = JSON.parse(line);
  if (cmd.disconnect) return socket.disconnect();
  if (cmd.connect) return socket.connect();
  if (cmd.pause || cmd.resume) {
    const tcp = socket.io.engine.transport.ws._socket;
    if (cmd.pause) tcp.pause();
    else tcp.resume();
    return report(cmd.pause ? 'paused' : 'resumed', {});
  }
  if (cmd.uri) {
    socket.io.uri = cmd.uri;
    return report('uri', { uri: cmd.uri });
  }
  const args = (cmd.args || []).map(into);
  if (cmd.ack && cmd.timeout) {
    socket.timeout(cmd.timeout).emit(cmd.emit, ...args, (err, ...ack) =>
      err
        ? report('ack', { name: cmd.emit, error: String(err.message || err) })
        : report('ack', { name: cmd.emit, args: ack.map(out) }),
    );
  } else if (cmd.ack) {
    socket.emit(cmd.emit, ...args, (...ack) => report('ack', { name: cmd.emit, args: ack.map(out) }));
  } else {
    socket.emit(cmd.emit, ...args);
  }
});
