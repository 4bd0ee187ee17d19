// The official `phoenix` client (Socket + Channel) under node, over the `ws`
// package's WebSocket.
//
//   node phoenix_client.js ENDPOINT TOPIC ['{"params":{…},"heartbeatIntervalMs":N}']
//
// ENDPOINT is the socket URL without the transport (ws://host:port/socket).
// Reports: open, joined {response}, join_error {response}, message {name,
// payload} (binary payloads as {"base64":…}), reply {name, status,
// response}, channel_error, channel_close, close, and with
// {"presence":true} sync {list:[{id, refs}]} (the official Presence
// helper's onSync list, sorted by id). With {"longpoll":true} the socket
// uses the client's LongPoll transport (over node's fetch) instead of `ws`.
// Stdin commands (one JSON
// per line): {"push":EVENT,"payload":…} or {"push":EVENT,"base64":…} (an
// ArrayBuffer payload), {"leave":true}, {"endpoint":URL} (reconnect to
// another node's socket URL; channels rejoin), {"route":URL} (send the
// next requests to another node's socket URL without closing anything, as
// a load balancer without sticky sessions would: a long poll then carries
// its session token to a node that does not hold it). With
// {"reconnectAfterMs":N} the socket reconnects after N ms (default 60000,
// so that tests drive reconnects). With {"recover":true} the
// channel's params are a function that adds {"since": <the last message's
// ref>} (docs/phoenix.md, "Recovery on rejoin"), and messages report `ref`.
'use strict';

const WebSocket = require('ws');
const { Socket, Presence, LongPoll } = require('phoenix');
const { report, reportFailures, onStdinLines } = require('./report');

reportFailures();
const [endpoint, topic, optionsJson = '{}'] = process.argv.slice(2);
const options = JSON.parse(optionsJson);

const binary = (payload) =>
  payload instanceof ArrayBuffer ? { base64: Buffer.from(payload).toString('base64') } : payload;

const socket = new Socket(endpoint, {
  transport: options.longpoll ? LongPoll : WebSocket,
  params: options.params || {},
  heartbeatIntervalMs: options.heartbeatIntervalMs || 30000,
  reconnectAfterMs: () => options.reconnectAfterMs || 60000,
});
socket.onOpen(() => report('open'));
socket.onClose((e) => report('close', { code: e && e.code }));
socket.connect();

const joinParams = options.joinParams || {};
let last = null;
const params = options.recover ? () => (last ? { ...joinParams, since: last } : joinParams) : joinParams;
const channel = socket.channel(topic, params);
channel.onMessage = (event, payload, ref) => {
  if (typeof event === 'string' && !event.startsWith('phx_') && !event.startsWith('chan_reply_')) {
    if (options.recover && typeof ref === 'string') last = ref;
    report('message', { name: event, payload: binary(payload), ...(options.recover ? { ref } : {}) });
  }
  return payload;
};
if (options.presence) {
  const presence = new Presence(channel);
  presence.onSync(() => {
    const list = presence.list((id, { metas }) => ({ id, refs: metas.map((m) => m.phx_ref).sort() }));
    list.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    report('sync', { list });
  });
}
channel.onError(() => report('channel_error'));
channel.onClose(() => report('channel_close'));
channel
  .join()
  .receive('ok', (response) => report('joined', { response }))
  .receive('error', (response) => report('join_error', { response }));

onStdinLines((line) => {
  const cmd = JSON.parse(line);
  if (cmd.endpoint) {
    socket.disconnect(() => {
      socket.endPoint = `${cmd.endpoint}/websocket`;
      socket.connect();
    });
    return;
  }
  if (cmd.route) {
    socket.endPoint = `${cmd.route}/websocket`;
    if (socket.conn && socket.conn.pollEndpoint) {
      socket.conn.pollEndpoint = socket.conn.normalizeEndpoint(socket.endPoint);
    }
    report('routed');
    return;
  }
  if (cmd.leave) {
    channel.leave().receive('ok', () => report('left'));
    return;
  }
  const payload =
    cmd.base64 !== undefined
      ? new Uint8Array(Buffer.from(cmd.base64, 'base64')).buffer
      : cmd.payload || {};
  channel
    .push(cmd.push, payload)
    .receive('ok', (response) => report('reply', { name: cmd.push, status: 'ok', response: binary(response) }))
    .receive('error', (response) => report('reply', { name: cmd.push, status: 'error', response: binary(response) }))
    .receive('timeout', () => report('reply', { name: cmd.push, status: 'timeout' }));
});
