import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';

import { REPO_ROOT } from '../lib/context';
import { STOP_MARGIN } from '../lib/sluice-container';

/** Directive -> values (a directive may repeat), for the [Service] section. */
function serviceSection(text: string): Map<string, string[]> {
  const directives = new Map<string, string[]>();
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = header[1]!;
      continue;
    }
    if (section !== 'Service') continue;
    const eq = line.indexOf('=');
    const key = line.slice(0, eq);
    directives.set(key, [...(directives.get(key) ?? []), line.slice(eq + 1)]);
  }
  return directives;
}

describe('systemd unit', () => {
  const unit = serviceSection(
    fs.readFileSync(path.join(REPO_ROOT, 'deploy', 'systemd', 'sluice.service'), 'utf8'),
  );
  const one = (key: string) => {
    const values = unit.get(key);
    assert.ok(values, `${key} is set`);
    return values.at(-1)!;
  };

  it('runs the binary, checks the configuration first, reloads on SIGHUP', () => {
    assert.equal(one('ExecStart').split(' ')[0], '/usr/local/bin/sluice');
    assert.equal(one('ExecStartPre'), '/usr/local/bin/sluice --check');
    assert.equal(one('ExecReload'), '/bin/kill -HUP $MAINPID');
    assert.equal(one('KillSignal'), 'SIGTERM');
  });

  it('gives Sluice its shutdown deadline plus the same margin as ECS', () => {
    assert.equal(one('TimeoutStopSec'), `${30 + STOP_MARGIN.toSeconds()}s`);
  });

  it('runs unprivileged and read-only with a high descriptor limit', () => {
    assert.equal(one('DynamicUser'), 'yes');
    assert.equal(one('NoNewPrivileges'), 'yes');
    assert.equal(one('ProtectSystem'), 'strict');
    assert.equal(one('ProtectHome'), 'yes');
    assert.equal(one('PrivateTmp'), 'yes');
    assert.equal(one('CapabilityBoundingSet'), '');
    assert.ok(Number(one('LimitNOFILE')) >= 65536);
  });
});
