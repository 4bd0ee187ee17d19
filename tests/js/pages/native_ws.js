// In the page: connect to pubmesh's native /websocket with the browser's own
// WebSocket and report every frame. args: {url}.
async (args) => {
  const ws = new WebSocket(args.url);
  ws.onopen = () => report('open', {});
  ws.onmessage = (m) => {
    let data = null;
    try { data = JSON.parse(m.data); } catch (_) { data = null; }
    report('frame', { text: String(m.data), data });
  };
  ws.onclose = (e) => report('close', { code: e.code, reason: e.reason });
  ws.onerror = () => report('error', { error: 'websocket error' });
}
