// One JSON object per line on stdout: what the Rust tests read (tests/src/js.rs).
'use strict';

function report(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

// Report uncaught failures as events, then exit non-zero.
function reportFailures() {
  const fail = (err) => {
    report('fatal', { error: String((err && err.stack) || err) });
    process.exit(1);
  };
  process.on('uncaughtException', fail);
  process.on('unhandledRejection', fail);
}

// Call `onLine` for each line written to stdin (commands from the test);
// exit when stdin closes, so a test that drops its handle ends the script.
function onStdinLines(onLine) {
  let buffered = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    buffered += chunk;
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line.length > 0) onLine(line);
    }
  });
  process.stdin.on('end', () => process.exit(0));
}

module.exports = { report, reportFailures, onStdinLines };
