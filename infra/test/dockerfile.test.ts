/**
 * The image cannot be built here (no Docker engine), so this checks what can go wrong without
 * one: that the path the Dockerfile copies is where `cargo build` puts the binary, that the
 * entrypoint is what was copied, that the runtime is non-root, and that .dockerignore admits
 * every file cargo needs and keeps out what must never reach the build context.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';

import { IgnoreStrategy } from 'aws-cdk-lib';

import { REPO_ROOT } from '../lib/context';
import { SLUICE_UID } from '../lib/sluice-container';

interface Instruction {
  keyword: string;
  args: string;
  stage: number;
}

/** Dockerfile instructions, continuation lines joined, comments dropped, with their stage. */
function parseDockerfile(text: string): Instruction[] {
  const logical: string[] = [];
  let current = '';
  for (const line of text.split('\n')) {
    if (/^\s*#/.test(line) && current === '') continue;
    if (/^\s*#/.test(line)) continue; // comments inside a continued instruction
    if (line.endsWith('\\')) {
      current += line.slice(0, -1) + ' ';
      continue;
    }
    current += line;
    if (current.trim() !== '') logical.push(current.trim());
    current = '';
  }
  let stage = -1;
  return logical.map((l) => {
    const match = /^(\S+)\s*(.*)$/s.exec(l)!;
    const keyword = match[1]!.toUpperCase();
    if (keyword === 'FROM') stage++;
    return { keyword, args: match[2]!.replace(/\s+/g, ' '), stage };
  });
}

interface CargoMetadata {
  workspace_root: string;
  target_directory: string;
  packages: {
    name: string;
    manifest_path: string;
    targets: { name: string; kind: string[]; src_path: string }[];
  }[];
}

function cargoMetadata(): CargoMetadata {
  // As inside the build container: no target-directory or target-triple overrides.
  const env = { ...process.env };
  delete env.CARGO_TARGET_DIR;
  delete env.CARGO_BUILD_TARGET;
  delete env.CARGO_BUILD_TARGET_DIR;
  const out = execFileSync('cargo', ['metadata', '--no-deps', '--format-version', '1'], {
    cwd: REPO_ROOT,
    env,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  return JSON.parse(out) as CargoMetadata;
}

describe('Dockerfile', () => {
  const instructions = parseDockerfile(fs.readFileSync(path.join(REPO_ROOT, 'Dockerfile'), 'utf8'));
  const metadata = cargoMetadata();
  const stages = instructions.filter((i) => i.keyword === 'FROM');
  const buildStage = 0;
  const runtimeStage = stages.length - 1;
  const inStage = (stage: number, keyword: string) =>
    instructions.filter((i) => i.stage === stage && i.keyword === keyword);

  const workdir = inStage(buildStage, 'WORKDIR').at(-1)!.args;
  const buildRun = inStage(buildStage, 'RUN').find((r) => /\bcargo build\b/.test(r.args));

  it('is a multi-stage build with a distroless non-root runtime', () => {
    assert.equal(stages.length, 2);
    assert.match(stages[buildStage]!.args, /^rust:\d+\.\d+-slim-bookworm AS build$/);
    assert.match(stages[runtimeStage]!.args, /^gcr\.io\/distroless\/cc-debian12:nonroot$/);
    const user = inStage(runtimeStage, 'USER').at(-1)?.args;
    assert.equal(user, `${SLUICE_UID}:${SLUICE_UID}`);
  });

  it('builds the sluice binary of the sluice package, in release mode, locked', () => {
    assert.ok(buildRun, 'a RUN with cargo build');
    const args = /cargo build ([^&;]*)/.exec(buildRun.args)![1]!.trim().split(' ');
    assert.ok(args.includes('--release'));
    assert.ok(args.includes('--locked'));
    assert.equal(args[args.indexOf('-p') + 1], 'sluice');
    assert.equal(args[args.indexOf('--bin') + 1], 'sluice');
    assert.equal(args.includes('--target'), false, 'a --target would move the output');
    assert.equal(args.includes('--target-dir'), false, 'a --target-dir would move the output');
    // Nothing in the image moves cargo's output either.
    for (const env of inStage(buildStage, 'ENV').concat(inStage(buildStage, 'ARG'))) {
      assert.doesNotMatch(env.args, /CARGO_(BUILD_)?TARGET/);
    }
    // The package and binary exist in the workspace under those names.
    const sluice = metadata.packages.find((p) => p.name === 'sluice');
    assert.ok(sluice, 'workspace package sluice');
    assert.ok(sluice.targets.some((t) => t.name === 'sluice' && t.kind.includes('bin')));
    assert.equal(
      path.relative(metadata.workspace_root, path.dirname(sluice.manifest_path)),
      'proxy',
    );
  });

  it('copies the binary from where cargo puts it, and runs what it copied', () => {
    const targetDir = path.relative(metadata.workspace_root, metadata.target_directory);
    assert.equal(targetDir.startsWith('..'), false, 'target dir inside the workspace');
    // The COPY . . puts the workspace root at WORKDIR.
    assert.ok(
      inStage(buildStage, 'COPY').some((c) => c.args === '. .'),
      'COPY . . of the workspace into WORKDIR',
    );
    const expected = path.posix.join(workdir, targetDir, 'release', 'sluice');
    const install = /install -D -m 0755 (\S+) (\S+)/.exec(buildRun!.args);
    assert.ok(install, 'an install of the binary');
    assert.equal(install[1], expected);
    // The target cache mount is that same directory.
    assert.match(
      buildRun!.args,
      new RegExp(`target=${path.posix.join(workdir, targetDir)}(\\s|$)`),
    );
    // The runtime copies /out/ to / and runs the installed path.
    const destination = install[2]!;
    assert.ok(destination.startsWith('/out/'));
    assert.ok(
      inStage(runtimeStage, 'COPY').some((c) => c.args === '--from=build /out/ /'),
      'COPY --from=build /out/ /',
    );
    const entrypoint = JSON.parse(inStage(runtimeStage, 'ENTRYPOINT').at(-1)!.args) as string[];
    assert.deepEqual(entrypoint, [destination.slice('/out'.length)]);
  });

  it('installs the RDS CA bundle where the stack tells Sluice to look', () => {
    const caRun = inStage(buildStage, 'RUN').find((r) => r.args.includes('rds-ca.pem'));
    assert.ok(caRun);
    assert.match(caRun.args, /-O \/out\/etc\/sluice\/rds-ca\.pem/);
    assert.match(caRun.args, /sha256sum -c/);
    const env = inStage(runtimeStage, 'ENV')
      .map((e) => e.args)
      .join(' ');
    assert.match(env, /SLUICE_BACKEND_TLS_CA_FILE=\/etc\/sluice\/rds-ca\.pem/);
  });

  it('exposes the MySQL and health ports and stops on SIGTERM', () => {
    assert.equal(inStage(runtimeStage, 'EXPOSE').at(-1)?.args, '3306 9090');
    assert.equal(inStage(runtimeStage, 'STOPSIGNAL').at(-1)?.args, 'SIGTERM');
  });
});

describe('.dockerignore', () => {
  const metadata = cargoMetadata();
  const patterns = fs
    .readFileSync(path.join(REPO_ROOT, '.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
  // The same matcher CDK uses when it stages the build context into cdk.out.
  const ignore = IgnoreStrategy.docker(REPO_ROOT, patterns);
  const admitted = (relative: string) => !ignore.ignores(path.join(REPO_ROOT, relative));

  it('admits the workspace manifests and every source file of every member', () => {
    assert.ok(admitted('Cargo.toml'));
    assert.ok(admitted('Cargo.lock'));
    assert.ok(metadata.packages.length >= 2, 'the root package and proxy at least');
    for (const pkg of metadata.packages) {
      const manifest = path.relative(REPO_ROOT, pkg.manifest_path);
      assert.ok(admitted(manifest), `${pkg.name}: ${manifest} is excluded`);
      for (const target of pkg.targets) {
        const src = path.relative(REPO_ROOT, target.src_path);
        assert.ok(
          admitted(src),
          `${pkg.name} ${target.kind.join(',')} ${target.name}: ${src} is excluded`,
        );
      }
    }
  });

  it('admits every file git tracks in those directories (modules, fixtures)', () => {
    const dirs = new Set(
      metadata.packages.flatMap((p) =>
        p.targets.map((t) => path.relative(REPO_ROOT, t.src_path).split(path.sep)[0]!),
      ),
    );
    const tracked = execFileSync('git', ['ls-files', '--', ...dirs], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
    })
      .split('\n')
      .filter((f) => f !== '' && !f.endsWith('.md'));
    assert.ok(tracked.length > 10);
    const excluded = tracked.filter((f) => !admitted(f));
    assert.deepEqual(excluded, []);
  });

  it('keeps build output, dependencies, VCS data and the CDK app out', () => {
    for (const never of [
      'target/release/sluice',
      'target/debug/build/x',
      'proxy/target/x',
      '.git/config',
      'infra/node_modules/aws-cdk-lib/package.json',
      'infra/cdk.out/manifest.json',
      'infra/bin/app.ts',
      'README.md',
      'scripts/test.sh',
    ]) {
      assert.equal(admitted(never), false, `${never} would be sent to the Docker build`);
    }
  });
});
