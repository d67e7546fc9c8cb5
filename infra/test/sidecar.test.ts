import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';

import { SidecarExampleStack } from '../lib/sidecar-example-stack';
import { SluiceSidecar } from '../lib/sluice-sidecar';
import {
  buildMain,
  getAtt,
  ingressRules,
  logicalId,
  newApp,
  onlyResourceOfType,
  policyStatements,
  ref,
  securityGroupNames,
  synthMain,
  tcp,
  TEST_IMAGE,
  TemplateJson,
} from './helpers';

function containersByName(json: TemplateJson): Record<string, any> {
  const [, taskDef] = onlyResourceOfType(json, 'AWS::ECS::TaskDefinition');
  return Object.fromEntries(
    (taskDef.Properties.ContainerDefinitions as any[]).map((c) => [c.Name, c]),
  );
}

const envOf = (container: any): Record<string, unknown> =>
  Object.fromEntries(
    (container.Environment as { Name: string; Value: unknown }[]).map((e) => [e.Name, e.Value]),
  );

describe('SluiceSidecar', () => {
  const app = newApp();
  const stack = new Stack(app, 'App');
  const key = new kms.Key(stack, 'Key', { enableKeyRotation: true });
  const secret = new secretsmanager.Secret(stack, 'Secret', { encryptionKey: key });
  const taskDefinition = new ecs.FargateTaskDefinition(stack, 'Task');
  const appContainer = taskDefinition.addContainer('app', {
    image: ecs.ContainerImage.fromRegistry('example.com/app:1'),
  });
  const sidecar = new SluiceSidecar(stack, 'Sluice', {
    taskDefinition,
    image: ecs.ContainerImage.fromRegistry(TEST_IMAGE),
    backendAddress: 'db.example.internal:3306',
    secret,
    backendMaxConnections: 4,
  });
  sidecar.serve(appContainer);
  const json = Template.fromStack(stack).toJSON() as TemplateJson;
  const containers = containersByName(json);

  it('adds a Sluice container listening on the task loopback only', () => {
    const sluice = containers.sluice;
    assert.ok(sluice, 'a container named sluice');
    assert.deepEqual(envOf(sluice), {
      SLUICE_LISTEN: '127.0.0.1:3306',
      SLUICE_HTTP_LISTEN: '127.0.0.1:9090',
      SLUICE_BACKEND_ADDRESS: 'db.example.internal:3306',
      SLUICE_BACKEND_MAX_CONNECTIONS: '4',
      SLUICE_SECRETS_MANAGER_SECRET_IDS: ref(logicalId(secret)),
      SLUICE_BACKEND_TLS: 'verify-identity',
      SLUICE_BACKEND_TLS_CA_FILE: '/etc/sluice/rds-ca.pem',
      SLUICE_SHUTDOWN_TIMEOUT: '30s',
      SLUICE_LOG_FORMAT: 'json',
    });
    assert.equal(sluice.PortMappings, undefined);
    assert.equal(sluice.ReadonlyRootFilesystem, true);
    assert.equal(sluice.User, '65532:65532');
    assert.equal(sluice.Essential, true);
  });

  it('points the application at 127.0.0.1:3306 and starts it after Sluice', () => {
    const appDef = containers.app;
    assert.deepEqual(envOf(appDef), { DB_HOST: '127.0.0.1', DB_PORT: '3306' });
    assert.deepEqual(appDef.DependsOn, [{ ContainerName: 'sluice', Condition: 'START' }]);
  });

  it("lets the task role read that secret and decrypt with that secret's key only", () => {
    const taskRole = ref(logicalId(taskDefinition.taskRole));
    const statements = policyStatements(json)
      .filter((s) => s.roles.some((r) => JSON.stringify(r) === JSON.stringify(taskRole)))
      .map((s) => ({ action: s.statement.Action, resource: s.statement.Resource }));
    assert.deepEqual(statements, [
      {
        action: ['secretsmanager:DescribeSecret', 'secretsmanager:GetSecretValue'],
        resource: ref(logicalId(secret)),
      },
      { action: 'kms:Decrypt', resource: getAtt(logicalId(key), 'Arn') },
    ]);
  });

  it('refuses task definitions whose containers do not share 127.0.0.1', () => {
    const bridge = new ecs.Ec2TaskDefinition(stack, 'BridgeTask', {
      networkMode: ecs.NetworkMode.BRIDGE,
    });
    assert.throws(
      () =>
        new SluiceSidecar(stack, 'Bridged', {
          taskDefinition: bridge,
          image: ecs.ContainerImage.fromRegistry(TEST_IMAGE),
          backendAddress: 'db:3306',
          secret,
        }),
      /awsvpc network mode/,
    );
  });
});

describe('the sidecar example stack', () => {
  const main = buildMain();
  const example = new SidecarExampleStack(main.app, 'Example', {
    vpc: main.stack.vpc,
    database: main.stack.database,
    databaseSecurityGroup: main.stack.databaseSecurityGroup,
    endpointSecurityGroup: main.stack.endpointSecurityGroup,
    secret: main.stack.secret,
    sluiceImage: ecs.ContainerImage.fromRegistry(TEST_IMAGE),
    appRepositoryName: 'customers-app',
    appImageTag: 'v1',
  });
  const json = Template.fromStack(example).toJSON() as TemplateJson;
  // Adding the example must not change the main stack.
  const mainWith = Template.fromStack(main.stack).toJSON() as TemplateJson;
  const mainAlone = synthMain().json;

  it('runs the application with Sluice beside it', () => {
    const containers = containersByName(json);
    assert.deepEqual(Object.keys(containers).sort(), ['app', 'sluice']);
    assert.equal(envOf(containers.app).DB_HOST, '127.0.0.1');
    assert.deepEqual(containers.app.DependsOn, [{ ContainerName: 'sluice', Condition: 'START' }]);
    assert.match(JSON.stringify(containers.app.Image), /customers-app:v1/);
    assert.match(JSON.stringify(envOf(containers.sluice).SLUICE_BACKEND_ADDRESS), /Endpoint/);
  });

  it('admits the application task to RDS and to the endpoints, from its own stack', () => {
    const appGroup = logicalId(example.appSecurityGroup);
    const names = {
      [appGroup]: 'app',
    };
    // The rules reference the main stack's groups through imports.
    const rules = ingressRules(json, names).map((r) => ({
      ...r,
      group: r.group.includes('DatabaseSecurityGroup')
        ? 'rds'
        : r.group.includes('EndpointSecurityGroup')
          ? 'endpoints'
          : r.group,
    }));
    const sorted = rules.map((r) => JSON.stringify(r)).sort();
    assert.deepEqual(
      sorted,
      [tcp('endpoints', 'app', 443), tcp('rds', 'app', 3306)].map((r) => JSON.stringify(r)).sort(),
    );
  });

  it('leaves the main stack chain untouched', () => {
    // Only exports for the example's references are added; no resource changes.
    assert.deepEqual(mainWith.Resources, mainAlone.Resources);
    assert.equal(ingressRules(mainWith, securityGroupNames(main.stack)).length, 6);
  });
});
