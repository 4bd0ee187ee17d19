// In the page: the official phoenix browser bundle (loaded as a script tag,
// global `Phoenix`) joins a topic over the browser's WebSocket and reports
// what arrives. args: {endpoint, topic, params, joinParams}.
async (args) => {
  const socket = new Phoenix.Socket(args.endpoint, {
    params: args.params || {},
    heartbeatIntervalMs: args.heartbeatIntervalMs || 30000,
    reconnectAfterMs: () => 60000,
  });
  socket.onOpen(() => report('open', {}));
  socket.connect();
  const channel = socket.channel(args.topic, args.joinParams || {});
  channel.onMessage = (event, payload) => {
    if (!event.startsWith('phx_') && !event.startsWith('chan_reply_')) {
      const shown = payload instanceof ArrayBuffer ? { bytes: Array.from(new Uint8Array(payload)) } : payload;
      report('message', { name: event, payload: shown });
    }
    return payload;
  };
  channel
    .join()
    .receive('ok', (response) => {
      report('joined', { response });
      channel.push('echo', { from: 'browser' }).receive('ok', (r) => report('reply', { name: 'echo', response: r }));
    })
    .receive('error', (response) => report('join_error', { response }));
}
