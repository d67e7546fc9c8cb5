import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  asArray,
  buildEc2,
  buildMain,
  findings,
  logicalId,
  MainProps,
  onlyResourceOfType,
  policyStatements,
  ref,
  resourcesOfType,
  synthMain,
  TemplateJson,
} from './helpers';

const TLS_SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:sluice-tls-AbCdEf';
const CA_PEM = '-----BEGIN CERTIFICATE-----\nMIIBstub\n-----END CERTIFICATE-----\n';
const IAM_CLIENTS: MainProps = {
  clientAuth: 'iam',
  databaseName: 'shop',
  clientTlsSecretArn: TLS_SECRET,
  clientTlsCaPem: CA_PEM,
};
const IAM_BOTH: MainProps = { ...IAM_CLIENTS, backendAuth: 'iam' };

/** The Sluice container's plain environment and its secrets, by name. */
function sluiceContainer(json: TemplateJson): {
  env: Record<string, unknown>;
  secrets: Record<string, unknown>;
} {
  const [, task] = onlyResourceOfType(json, 'AWS::ECS::TaskDefinition');
  const container = task.Properties.ContainerDefinitions.find((c: any) => c.Name === 'sluice');
  const env = Object.fromEntries((container.Environment ?? []).map((e: any) => [e.Name, e.Value]));
  const secrets = Object.fromEntries(
    (container.Secrets ?? []).map((e: any) => [e.Name, e.ValueFrom]),
  );
  return { env, secrets };
}

function functionEnv(json: TemplateJson): Record<string, unknown> {
  const [, fn] = resourcesOfType(json, 'AWS::Lambda::Function').find(
    ([, r]) => r.Properties.Handler === 'bootstrap',
  )!;
  return fn.Properties.Environment.Variables;
}

/** The actions a role's identity policies allow. */
function actionsOf(json: TemplateJson, role: string): string[] {
  return policyStatements(json)
    .filter((s) => s.roles.some((r) => JSON.stringify(r) === JSON.stringify(ref(role))))
    .flatMap((s) => asArray<string>(s.statement.Action))
    .sort();
}

describe('identity: the Lambda logs in with IAM (clientAuth iam)', () => {
  const { stack, json } = synthMain(IAM_CLIENTS);
  const functionRole = logicalId(stack.function.role!);
  const taskRole = logicalId(stack.service.taskDefinition.taskRole);
  const executionRole = logicalId(stack.service.taskDefinition.executionRole!);

  it('gives the Lambda no secret and no permission on Secrets Manager or KMS', () => {
    const env = functionEnv(json);
    assert.equal(env.SECRET_ARN, undefined);
    assert.deepEqual(
      {
        AUTH_MODE: env.AUTH_MODE,
        DB_USER: env.DB_USER,
        SLUICE_AUDIENCE: env.SLUICE_AUDIENCE,
        DB_NAME: env.DB_NAME,
        DB_TLS: env.DB_TLS,
        DB_TLS_CA_PEM: env.DB_TLS_CA_PEM,
      },
      {
        AUTH_MODE: 'iam',
        DB_USER: 'admin',
        SLUICE_AUDIENCE: 'sluice-Sluice',
        DB_NAME: 'shop',
        DB_TLS: 'required',
        DB_TLS_CA_PEM: CA_PEM,
      },
    );
    const actions = actionsOf(json, functionRole);
    assert.deepEqual(
      actions.filter((a) => /^(secretsmanager|kms|sts|rds-db):/.test(a)),
      [],
      actions.join(', '),
    );
  });

  it("maps the Lambda's role to its database user and requires client TLS from the secret", () => {
    const { env, secrets } = sluiceContainer(json);
    assert.equal(env.SLUICE_IAM_AUDIENCE, 'sluice-Sluice');
    assert.equal(env.SLUICE_TLS_MODE, 'required');
    assert.match(JSON.stringify(env.SLUICE_IAM_IDENTITIES), new RegExp(`${functionRole}.*=admin`));
    assert.deepEqual(env.SLUICE_IAM_STS_REGION, { Ref: 'AWS::Region' });
    assert.deepEqual(secrets, {
      SLUICE_TLS_CERT_PEM: `${TLS_SECRET}:certificate::`,
      SLUICE_TLS_KEY_PEM: `${TLS_SECRET}:privateKey::`,
    });
    // The backend still logs in with the database secret.
    assert.ok(env.SLUICE_SECRETS_MANAGER_SECRET_IDS !== undefined);
    assert.equal(env.SLUICE_RDS_IAM_USERS, undefined);
  });

  it('lets only the execution role read the TLS secret, and the task role the database secret', () => {
    const exec = policyStatements(json).filter((s) =>
      s.roles.some((r) => JSON.stringify(r) === JSON.stringify(ref(executionRole))),
    );
    const tls = exec.filter((s) =>
      asArray<string>(s.statement.Action).includes('secretsmanager:GetSecretValue'),
    );
    assert.equal(tls.length, 1);
    assert.equal(tls[0]!.statement.Resource, TLS_SECRET);
    assert.ok(actionsOf(json, taskRole).includes('secretsmanager:GetSecretValue'));
  });

  it('adds an STS interface endpoint with private DNS, reachable from Sluice only', () => {
    const sts = resourcesOfType(json, 'AWS::EC2::VPCEndpoint').filter(([, r]) =>
      JSON.stringify(r.Properties.ServiceName).includes('.sts'),
    );
    assert.equal(sts.length, 1);
    const [, endpoint] = sts[0]!;
    assert.equal(endpoint.Properties.PrivateDnsEnabled, true);
    assert.deepEqual(endpoint.Properties.SecurityGroupIds, [
      { 'Fn::GetAtt': [logicalId(stack.endpointSecurityGroup), 'GroupId'] },
    ]);
  });

  it('has no STS endpoint without IAM logins', () => {
    const { json: plain } = synthMain();
    const sts = resourcesOfType(plain, 'AWS::EC2::VPCEndpoint').filter(([, r]) =>
      JSON.stringify(r.Properties.ServiceName).includes('.sts'),
    );
    assert.equal(sts.length, 0);
  });

  it('passes cdk-nag', () => {
    assert.deepEqual(findings(buildMain(IAM_CLIENTS).stack), []);
  });
});

describe('identity: IAM end to end (clientAuth and backendAuth iam)', () => {
  const { stack, json } = synthMain(IAM_BOTH);
  const taskRole = logicalId(stack.service.taskDefinition.taskRole);
  const database = logicalId(stack.database);

  it('turns on IAM authentication on the database', () => {
    const [, db] = onlyResourceOfType(json, 'AWS::RDS::DBInstance');
    assert.equal(db.Properties.EnableIAMDatabaseAuthentication, true);
  });

  it('lets the task rds-db:connect as exactly the one user, and read no secret', () => {
    const mine = policyStatements(json).filter((s) =>
      s.roles.some((r) => JSON.stringify(r) === JSON.stringify(ref(taskRole))),
    );
    assert.deepEqual(
      mine.map((s) => s.statement.Action),
      ['rds-db:connect'],
    );
    const resource = JSON.stringify(mine[0]!.statement.Resource);
    assert.match(resource, /:rds-db:/);
    assert.match(resource, /:dbuser:/);
    assert.ok(resource.includes(`"${database}","DbiResourceId"`), resource);
    assert.ok(resource.endsWith('/app"]]}'), resource);
    const { env } = sluiceContainer(json);
    assert.equal(env.SLUICE_SECRETS_MANAGER_SECRET_IDS, undefined);
    assert.equal(env.SLUICE_RDS_IAM_USERS, 'app');
    assert.match(JSON.stringify(env.SLUICE_IAM_IDENTITIES), /=app"/);
    assert.equal(functionEnv(json).DB_USER, 'app');
  });

  it('grants GetSecretValue nowhere but the execution role (for the TLS certificate)', () => {
    const executionRole = logicalId(stack.service.taskDefinition.executionRole!);
    for (const { roles, statement } of policyStatements(json)) {
      if (!asArray<string>(statement.Action).includes('secretsmanager:GetSecretValue')) continue;
      assert.deepEqual(roles, [ref(executionRole)]);
      assert.equal(statement.Resource, TLS_SECRET);
    }
  });

  it('outputs the statement that creates the IAM database user', () => {
    const out = json.Outputs?.CreateIamDatabaseUser?.Value as string;
    assert.match(
      out,
      /CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED WITH AWSAuthenticationPlugin/,
    );
    assert.match(out, /GRANT ALL PRIVILEGES ON `shop`\.\* TO 'app'@'%'/);
  });

  it('passes cdk-nag', () => {
    assert.deepEqual(findings(buildMain(IAM_BOTH).stack), []);
  });
});

describe('identity: settings that cannot work fail synth with the reason', () => {
  const cases: [string, MainProps, RegExp][] = [
    ['backend IAM alone', { backendAuth: 'iam' }, /needs clientAuth 'iam'/],
    [
      'IAM logins without TLS material',
      { clientAuth: 'iam', databaseName: 'shop' },
      /needs clientTlsSecretArn, clientTlsCaPem/,
    ],
    [
      'IAM logins without a database name',
      { ...IAM_CLIENTS, databaseName: undefined },
      /needs databaseName/,
    ],
    ['a CA that is not PEM', { ...IAM_CLIENTS, clientTlsCaPem: 'nope' }, /no PEM certificate/],
    ['an odd user name', { ...IAM_BOTH, iamDatabaseUser: "x'; DROP" }, /iamDatabaseUser/],
    ['an unknown mode', { clientAuth: 'kerberos' as never }, /clientAuth must be/],
  ];
  for (const [name, props, message] of cases) {
    it(name, () => {
      assert.throws(() => buildMain(props), message);
    });
  }
  it('EC2 hosting', () => {
    assert.throws(() => buildEc2(IAM_CLIENTS), /Fargate hosting only/);
  });
});
