// An HTTP reverse proxy that sends each request to the next of its
// upstreams in turn (no sticky sessions), as a round-robin load balancer
// would; WebSocket upgrades are piped the same way.
//
//   node socketio_round_robin.js PORT1 PORT2 …
//
// Reports: listening {port}; on the stdin command {"stats":true}, stats
// {requests: [count per upstream]}.
'use strict';

const http = require('http');
const net = require('net');
const { report, reportFailures, onStdinLines } = require('./report');

reportFailures();
const upstreams = process.argv.slice(2).map(Number);
const requests = upstreams.map(() => 0);
let next = 0;
const pick = () => {
  const i = next;
  next = (next + 1) % upstreams.length;
  requests[i] += 1;
  return upstreams[i];
};

const server = http.createServer((req, res) => {
  const upstream = http.request(
    { host: '127.0.0.1', port: pick(), method: req.method, path: req.url, headers: req.headers, agent: false },
    (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    },
  );
  upstream.on('error', () => {
    res.writeHead(502);
    res.end();
  });
  req.pipe(upstream);
});

server.on('upgrade', (req, socket, head) => {
  const upstream = net.connect(pick(), '127.0.0.1', () => {
    let lines = `${req.method} ${req.url} HTTP/1.1\r\n`;
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      lines += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
    }
    upstream.write(lines + '\r\n');
    if (head && head.length) upstream.write(head);
    upstream.pipe(socket);
    socket.pipe(upstream);
  });
  upstream.on('error', () => socket.destroy());
  socket.on('error', () => upstream.destroy());
});

server.listen(0, '127.0.0.1', () => report('listening', { port: server.address().port }));

onStdinLines((line) => {
  const cmd = JSON.parse(line);
  if (cmd.stats) report('stats', { requests });
});
