import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';

import * as ecs from 'aws-cdk-lib/aws-ecs';

import {
  asArray,
  getAtt,
  logicalId,
  onlyResourceOfType,
  policyStatements,
  ref,
  resourcesOfType,
  synthMain,
  TemplateJson,
} from './helpers';

/** A Docker build context that is staged but never built (synth does not run docker). */
function stubDockerContext(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-image-'));
  fs.writeFileSync(path.join(dir, 'Dockerfile'), 'FROM scratch\n');
  return dir;
}

function secretAndKey(json: TemplateJson) {
  const [secretId, secret] = onlyResourceOfType(json, 'AWS::SecretsManager::Secret');
  const [attachmentId, attachment] = onlyResourceOfType(
    json,
    'AWS::SecretsManager::SecretTargetAttachment',
  );
  const [keyId] = onlyResourceOfType(json, 'AWS::KMS::Key');
  return { secretId, secret, attachmentId, attachment, keyId };
}

describe('IAM: least privilege', () => {
  // The real app's image is an asset in ECR, which adds the execution role's pull grants.
  const { stack, json } = synthMain({
    sluiceImage: ecs.ContainerImage.fromAsset(stubDockerContext()),
  });
  const { secretId, attachmentId, attachment, keyId } = secretAndKey(json);
  const taskRole = logicalId(stack.service.taskDefinition.taskRole);
  const executionRole = logicalId(stack.service.taskDefinition.executionRole!);
  const functionRole = logicalId(stack.function.role!);
  const statements = policyStatements(json);

  // The secret consumers are given is the one attached to the instance, i.e. our secret.
  const theSecret = [ref(attachmentId)];
  const theKey = [getAtt(keyId, 'Arn')];
  const readTheSecret = {
    Sid: 'ReadTheDatabaseSecret',
    Effect: 'Allow',
    Action: ['secretsmanager:DescribeSecret', 'secretsmanager:GetSecretValue'],
    Resource: theSecret[0],
  };
  const decryptWithTheKey = {
    Sid: 'DecryptTheDatabaseSecret',
    Effect: 'Allow',
    Action: 'kms:Decrypt',
    Resource: theKey[0],
    Condition: {
      StringEquals: {
        'kms:ViaService': {
          'Fn::Join': ['', ['secretsmanager.', { Ref: 'AWS::Region' }, '.amazonaws.com']],
        },
      },
    },
  };

  it('consumers get the secret RDS attaches to the instance, which is the generated one', () => {
    assert.deepEqual(attachment.Properties.SecretId, ref(secretId));
    assert.deepEqual(attachment.Properties.TargetId, ref(logicalId(stack.database)));
  });

  it('lets the Sluice task read exactly the one secret and decrypt with exactly the one key', () => {
    const mine = statements.filter((s) =>
      s.roles.some((r) => JSON.stringify(r) === JSON.stringify(ref(taskRole))),
    );
    assert.deepEqual(
      mine.map((s) => s.statement),
      [readTheSecret, decryptWithTheKey],
    );
  });

  it('lets the Lambda read exactly the one secret and decrypt with exactly the one key', () => {
    const mine = statements.filter((s) =>
      s.roles.some((r) => JSON.stringify(r) === JSON.stringify(ref(functionRole))),
    );
    assert.deepEqual(
      mine.map((s) => s.statement),
      [readTheSecret, decryptWithTheKey],
    );
  });

  it('gives the Lambda AWSLambdaVPCAccessExecutionRole', () => {
    const role = json.Resources[functionRole]!;
    const managed = JSON.stringify(role.Properties.ManagedPolicyArns);
    assert.match(managed, /service-role\/AWSLambdaVPCAccessExecutionRole/);
  });

  it('names secrets and keys exactly, with no wildcard, in every policy of the stack', () => {
    let checked = 0;
    for (const { policy, statement } of statements) {
      const actions = asArray<string>(statement.Action);
      const services = new Set(actions.map((a) => a.split(':')[0]));
      if (!services.has('secretsmanager') && !services.has('kms')) continue;
      checked++;
      for (const action of actions) {
        assert.doesNotMatch(action, /\*/, `${policy}: wildcard action ${action}`);
      }
      const resources = asArray<unknown>(statement.Resource).map((r) => JSON.stringify(r));
      const allowed = services.has('kms') ? theKey : theSecret;
      assert.deepEqual(
        resources,
        allowed.map((r) => JSON.stringify(r)),
        `${policy}: ${JSON.stringify(statement)}`,
      );
    }
    assert.equal(checked, 4, 'two statements each for the task and the Lambda');
  });

  it('keeps the execution role to pulling the image and writing logs', () => {
    const mine = statements.filter((s) =>
      s.roles.some((r) => JSON.stringify(r) === JSON.stringify(ref(executionRole))),
    );
    const actions = mine.flatMap((s) => asArray<string>(s.statement.Action)).sort();
    assert.deepEqual(actions, [
      'ecr:BatchCheckLayerAvailability',
      'ecr:BatchGetImage',
      'ecr:GetAuthorizationToken',
      'ecr:GetDownloadUrlForLayer',
      'logs:CreateLogStream',
      'logs:PutLogEvents',
    ]);
  });

  it('uses a wildcard resource only for ecr:GetAuthorizationToken, which has no other form', () => {
    const wildcards = statements.filter(({ statement }) =>
      asArray<unknown>(statement.Resource).includes('*'),
    );
    assert.deepEqual(
      wildcards.map(({ statement }) => statement.Action),
      ['ecr:GetAuthorizationToken'],
    );
  });

  it('leaves the key policy at the account default plus Secrets Manager use', () => {
    const key = json.Resources[keyId]!;
    const principals = (key.Properties.KeyPolicy.Statement as any[]).map((s) =>
      JSON.stringify(s.Principal),
    );
    // No role is granted anything in the key policy: grants live in the identity policies
    // checked above.
    for (const role of [taskRole, functionRole, executionRole]) {
      assert.equal(
        principals.some((p) => p.includes(role)),
        false,
        `${role} appears in the key policy`,
      );
    }
  });

  it('has no IAM users or groups, and inline policies only where CDK closes the default group', () => {
    assert.equal(resourcesOfType(json, 'AWS::IAM::User').length, 0);
    assert.equal(resourcesOfType(json, 'AWS::IAM::Group').length, 0);
    const inline = statements.filter((s) => s.policy.includes('/'));
    assert.ok(inline.length > 0);
    for (const { policy, statement } of inline) {
      assert.match(policy, /^CustomVpcRestrictDefaultSGCustomResourceProviderRole/);
      for (const action of asArray<string>(statement.Action)) {
        assert.match(action, /^ec2:(Authorize|Revoke)SecurityGroup(Ingress|Egress)$/);
      }
      // Scoped to the VPC's default security group.
      assert.match(JSON.stringify(statement.Resource), /security-group\/.*DefaultSecurityGroup/);
    }
  });
});
