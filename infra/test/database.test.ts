import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { DATABASE_USERNAME } from '../lib/sluice-stack';
import { getAtt, logicalId, onlyResourceOfType, ref, synthMain } from './helpers';

describe('key, secret and database', () => {
  const { stack, template, json } = synthMain();
  const [keyId, key] = onlyResourceOfType(json, 'AWS::KMS::Key');
  const [secretId, secret] = onlyResourceOfType(json, 'AWS::SecretsManager::Secret');
  const [, db] = onlyResourceOfType(json, 'AWS::RDS::DBInstance');

  it('uses a customer-managed key with rotation', () => {
    assert.equal(key.Properties.EnableKeyRotation, true);
    assert.equal(key.Properties.KeySpec ?? 'SYMMETRIC_DEFAULT', 'SYMMETRIC_DEFAULT');
  });

  it('generates the secret under that key: constant user, no punctuation in the password', () => {
    assert.deepEqual(secret.Properties.KmsKeyId, getAtt(keyId, 'Arn'));
    const generate = secret.Properties.GenerateSecretString;
    assert.equal(generate.ExcludePunctuation, true);
    assert.equal(generate.GenerateStringKey, 'password');
    assert.deepEqual(JSON.parse(generate.SecretStringTemplate), { username: DATABASE_USERNAME });
    assert.equal(DATABASE_USERNAME, 'admin');
  });

  it('takes the instance credentials from that secret', () => {
    assert.match(JSON.stringify(db.Properties.MasterUsername), new RegExp(secretId));
    assert.match(JSON.stringify(db.Properties.MasterUserPassword), new RegExp(secretId));
  });

  it('runs a concrete MySQL 8.4 with storage encrypted by the same key', () => {
    assert.equal(db.Properties.Engine, 'mysql');
    assert.match(db.Properties.EngineVersion, /^8\.4\.\d+$/);
    assert.equal(db.Properties.StorageEncrypted, true);
    assert.deepEqual(db.Properties.KmsKeyId, getAtt(keyId, 'Arn'));
    assert.equal(db.Properties.PubliclyAccessible, false);
  });

  it('lives in the isolated subnets', () => {
    const [, subnetGroup] = onlyResourceOfType(json, 'AWS::RDS::DBSubnetGroup');
    assert.deepEqual(
      subnetGroup.Properties.SubnetIds.map((s: unknown) => JSON.stringify(s)).sort(),
      stack.vpc.isolatedSubnets.map((s) => JSON.stringify(ref(logicalId(s)))).sort(),
    );
  });

  it('requires TLS, which Sluice verifies against the RDS CA', () => {
    template.hasResourceProperties('AWS::RDS::DBParameterGroup', {
      Parameters: { require_secure_transport: '1' },
    });
    assert.equal(db.Properties.CACertificateIdentifier, 'rds-ca-rsa2048-g1');
  });

  it('is deletion-protected by default and snapshotted on removal', () => {
    assert.equal(db.Properties.DeletionProtection, true);
    template.hasResource('AWS::RDS::DBInstance', { DeletionPolicy: 'Snapshot' });
    assert.equal(db.Properties.MultiAZ, false);
  });

  it('takes deletion protection, Multi-AZ, size and database name from props', () => {
    const other = synthMain({
      deletionProtection: false,
      multiAz: true,
      databaseStorageGiB: 50,
      databaseName: 'customers',
    });
    const [, otherDb] = onlyResourceOfType(other.json, 'AWS::RDS::DBInstance');
    assert.equal(otherDb.Properties.DeletionProtection, false);
    assert.equal(otherDb.Properties.MultiAZ, true);
    assert.equal(otherDb.Properties.AllocatedStorage, '50');
    assert.equal(otherDb.Properties.DBName, 'customers');
    other.template.hasResource('AWS::RDS::DBInstance', { DeletionPolicy: 'Delete' });
  });
});
