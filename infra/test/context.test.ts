import assert from 'node:assert/strict';
import * as path from 'node:path';
import { describe, it } from 'node:test';

import { Duration } from 'aws-cdk-lib';
import * as lambda from 'aws-cdk-lib/aws-lambda';

import {
  DEFAULT_FUNCTION_ZIP,
  functionCodeFromContext,
  REPO_ROOT,
  stackSettingsFromContext,
} from '../lib/context';
import { newApp, stubFunctionDir } from './helpers';

describe('context', () => {
  it('reads sizes and switches, as strings from the command line', () => {
    const app = newApp({
      azCount: '2',
      taskCount: '3',
      taskCpu: '1024',
      taskMemory: '2048',
      backendMaxConnections: '30',
      shutdownTimeoutSeconds: '45',
      dbInstanceType: 'db.r7g.large',
      dbStorageGiB: '100',
      dbName: 'customers',
      multiAz: 'true',
      deletionProtection: 'false',
      availabilityZones: 'eu-west-1a, eu-west-1b',
    });
    const s = stackSettingsFromContext(app.node);
    assert.equal(s.azCount, 2);
    assert.equal(s.taskCount, 3);
    assert.equal(s.taskCpu, 1024);
    assert.equal(s.taskMemoryMiB, 2048);
    assert.equal(s.backendMaxConnections, 30);
    assert.equal(s.shutdownTimeout?.toSeconds(), Duration.seconds(45).toSeconds());
    assert.equal(s.databaseInstanceType?.toString(), 'r7g.large');
    assert.equal(s.databaseStorageGiB, 100);
    assert.equal(s.databaseName, 'customers');
    assert.equal(s.multiAz, true);
    assert.equal(s.deletionProtection, false);
    assert.deepEqual(s.availabilityZones, ['eu-west-1a', 'eu-west-1b']);
  });

  it('leaves everything to the stack defaults when nothing is given', () => {
    const s = stackSettingsFromContext(newApp().node);
    assert.deepEqual(
      Object.entries(s).filter(([, v]) => v !== undefined),
      [],
    );
  });

  it('names the key of a bad value', () => {
    assert.throws(
      () => stackSettingsFromContext(newApp({ taskCount: 'two' }).node),
      /context taskCount: expected a positive integer, got "two"/,
    );
    assert.throws(
      () => stackSettingsFromContext(newApp({ taskCount: '0' }).node),
      /context taskCount/,
    );
    assert.throws(
      () => stackSettingsFromContext(newApp({ multiAz: 'yes' }).node),
      /context multiAz: expected true or false/,
    );
  });

  it('uses a package directory holding bootstrap', () => {
    const code = functionCodeFromContext(newApp({ functionZip: stubFunctionDir() }).node);
    assert.ok(code instanceof lambda.AssetCode);
  });

  it('fails with the build command when the Lambda package is missing', () => {
    const missing = path.join(stubFunctionDir(), 'nope.zip');
    assert.throws(
      () => functionCodeFromContext(newApp({ functionZip: missing }).node),
      (e: Error) =>
        e.message.includes(missing) &&
        e.message.includes('cargo lambda build --release --arm64 --output-format zip') &&
        e.message.includes('-c functionZip='),
    );
  });

  it("defaults to cargo lambda's output in the workspace target directory", () => {
    assert.equal(
      DEFAULT_FUNCTION_ZIP,
      path.join(REPO_ROOT, 'target', 'lambda', 'sluice-function', 'bootstrap.zip'),
    );
    assert.equal(path.basename(REPO_ROOT), path.basename(path.resolve(__dirname, '..', '..')));
  });
});
