// An AMI tool built on asterisk-manager (as published on npm), logged in to
// the callhook AMI proxy. Driven by tests/e2e_ami_proxy.rs: it prints one
// JSON object per line (ready, event, list, pong, bye) and obeys the commands
// it reads on stdin (list, ping, quit).
'use strict';
const AsteriskManager = require('asterisk-manager');
const readline = require('readline');

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const ami = new AsteriskManager(
  Number(process.env.PX_PORT), '127.0.0.1', process.env.PX_USER, process.env.PX_SECRET, true);

// List items and their Complete event, by the ActionID they carry.
const lists = {};
ami.on('managerevent', (ev) => {
  if (ev.actionid && lists[ev.actionid]) {
    const l = lists[ev.actionid];
    l.items.push(ev);
    if (/complete$/i.test(ev.event)) {
      delete lists[ev.actionid];
      l.done(l.items);
    }
    return;
  }
  out({ event: ev });
});
ami.on('error', (e) => out({ error: String(e) }));

function list() {
  return new Promise((resolve, reject) => {
    const id = ami.action({ action: 'CoreShowChannels' }, (err, res) => {
      if (err) reject(err);
      else lists[res.actionid].items.unshift(res);
    });
    lists[id] = { items: [], done: resolve };
  });
}

ami.on('connect', () => {});
// The library logs in on connect; the response to its login arrives first.
ami.once('response', (res) => {
  out({ ready: res.response === 'Success', login: res });
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', async (line) => {
    line = line.trim();
    if (line === 'list') {
      const [a, b] = await Promise.all([list(), list()]);
      out({ list: a });
      out({ list: b });
    } else if (line === 'ping') {
      ami.action({ action: 'Ping' }, (err, res) => out({ pong: res || err }));
    } else {
      ami.action({ action: 'Logoff' }, (err, res) => {
        out({ bye: res || err });
        ami.disconnect();
        process.exit(0);
      });
    }
  });
});
