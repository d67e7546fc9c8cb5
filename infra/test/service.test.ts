import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Duration } from 'aws-cdk-lib';

import { HEALTH_PORT, MYSQL_PORT, sluiceEnvironment } from '../lib/sluice-container';
import {
  getAtt,
  logicalId,
  onlyResourceOfType,
  ref,
  synthMain,
  TEST_IMAGE,
  TemplateJson,
} from './helpers';

function sluiceContainer(json: TemplateJson) {
  const [, taskDef] = onlyResourceOfType(json, 'AWS::ECS::TaskDefinition');
  const containers = taskDef.Properties.ContainerDefinitions as any[];
  assert.equal(containers.length, 1);
  return { taskDef, container: containers[0] };
}

function attributes(resource: any): Record<string, string> {
  return Object.fromEntries(
    (resource.Properties.TargetGroupAttributes as { Key: string; Value: string }[]).map((a) => [
      a.Key,
      a.Value,
    ]),
  );
}

describe('Sluice on ECS Fargate behind an internal NLB', () => {
  const { stack, json } = synthMain();
  const { taskDef, container } = sluiceContainer(json);
  const [, service] = onlyResourceOfType(json, 'AWS::ECS::Service');
  const [, tg] = onlyResourceOfType(json, 'AWS::ElasticLoadBalancingV2::TargetGroup');
  const [nlbId, nlb] = onlyResourceOfType(json, 'AWS::ElasticLoadBalancingV2::LoadBalancer');
  const attachmentId = onlyResourceOfType(json, 'AWS::SecretsManager::SecretTargetAttachment')[0];

  it('runs arm64 Fargate tasks, two by default, in the isolated subnets of both zones', () => {
    assert.deepEqual(taskDef.Properties.RequiresCompatibilities, ['FARGATE']);
    assert.deepEqual(taskDef.Properties.RuntimePlatform, {
      CpuArchitecture: 'ARM64',
      OperatingSystemFamily: 'LINUX',
    });
    assert.equal(service.Properties.LaunchType, 'FARGATE');
    assert.equal(service.Properties.DesiredCount, 2);
    const network = service.Properties.NetworkConfiguration.AwsvpcConfiguration;
    assert.equal(network.AssignPublicIp, 'DISABLED');
    assert.deepEqual(
      network.Subnets.map((s: unknown) => JSON.stringify(s)).sort(),
      stack.vpc.isolatedSubnets.map((s) => JSON.stringify(ref(logicalId(s)))).sort(),
    );
  });

  it('runs the container non-root, read-only, without capabilities', () => {
    assert.equal(container.Image, TEST_IMAGE);
    assert.equal(container.Essential, true);
    assert.equal(container.ReadonlyRootFilesystem, true);
    assert.equal(container.User, '65532:65532');
    assert.equal(container.Privileged, false);
    assert.deepEqual(container.LinuxParameters.Capabilities, { Drop: ['ALL'] });
    assert.deepEqual(container.Ulimits, [{ Name: 'nofile', SoftLimit: 65536, HardLimit: 65536 }]);
    assert.deepEqual(
      container.PortMappings.map((p: any) => p.ContainerPort),
      [MYSQL_PORT, HEALTH_PORT],
    );
  });

  it('configures Sluice through its environment', () => {
    const env = Object.fromEntries(
      (container.Environment as { Name: string; Value: unknown }[]).map((e) => [e.Name, e.Value]),
    );
    const [dbId] = onlyResourceOfType(json, 'AWS::RDS::DBInstance');
    assert.deepEqual(env, {
      SLUICE_LISTEN: '0.0.0.0:3306',
      SLUICE_HTTP_LISTEN: '0.0.0.0:9090',
      SLUICE_BACKEND_ADDRESS: {
        'Fn::Join': ['', [getAtt(dbId, 'Endpoint.Address'), ':', getAtt(dbId, 'Endpoint.Port')]],
      },
      SLUICE_BACKEND_MAX_CONNECTIONS: '20',
      SLUICE_SECRETS_MANAGER_SECRET_IDS: ref(attachmentId),
      SLUICE_BACKEND_TLS: 'verify-identity',
      SLUICE_BACKEND_TLS_CA_FILE: '/etc/sluice/rds-ca.pem',
      SLUICE_SHUTDOWN_TIMEOUT: '30s',
      SLUICE_LOG_FORMAT: 'json',
    });
  });

  it('listens internally on 3306 and checks /readyz on the health port', () => {
    assert.equal(nlb.Properties.Type, 'network');
    assert.equal(nlb.Properties.Scheme, 'internal');
    const [, listener] = onlyResourceOfType(json, 'AWS::ElasticLoadBalancingV2::Listener');
    assert.equal(listener.Properties.Port, 3306);
    assert.equal(listener.Properties.Protocol, 'TCP');
    assert.deepEqual(listener.Properties.LoadBalancerArn, ref(nlbId));
    assert.equal(tg.Properties.Port, 3306);
    assert.equal(tg.Properties.Protocol, 'TCP');
    assert.equal(tg.Properties.HealthCheckProtocol, 'HTTP');
    assert.equal(tg.Properties.HealthCheckPort, '9090');
    assert.equal(tg.Properties.HealthCheckPath, '/readyz');
    assert.deepEqual(tg.Properties.Matcher, { HttpCode: '200' });
    assert.deepEqual(service.Properties.LoadBalancers, [
      {
        ContainerName: 'sluice',
        ContainerPort: 3306,
        TargetGroupArn: ref(logicalId(stack.targetGroup)),
      },
    ]);
  });

  it('drains and stops within times derived from SLUICE_SHUTDOWN_TIMEOUT', () => {
    assert.equal(attributes(tg)['deregistration_delay.timeout_seconds'], '30');
    assert.equal(container.StopTimeout, 35);
    const slow = synthMain({ shutdownTimeout: Duration.seconds(60), taskCount: 3 });
    const slowContainer = sluiceContainer(slow.json).container;
    const slowTg = onlyResourceOfType(slow.json, 'AWS::ElasticLoadBalancingV2::TargetGroup')[1];
    assert.equal(attributes(slowTg)['deregistration_delay.timeout_seconds'], '60');
    assert.equal(slowContainer.StopTimeout, 65);
    assert.ok(
      (slowContainer.Environment as any[]).some(
        (e) => e.Name === 'SLUICE_SHUTDOWN_TIMEOUT' && e.Value === '60s',
      ),
    );
    assert.equal(onlyResourceOfType(slow.json, 'AWS::ECS::Service')[1].Properties.DesiredCount, 3);
  });

  it('refuses a shutdown deadline ECS cannot honour', () => {
    assert.throws(
      () => synthMain({ shutdownTimeout: Duration.seconds(116) }),
      /shutdownTimeout must be between 1 and 115 seconds/,
    );
    assert.throws(
      () =>
        sluiceEnvironment({
          listenHost: '0.0.0.0',
          healthHost: '0.0.0.0',
          backendAddress: 'db:3306',
          backendMaxConnections: 0,
          secretArns: ['arn'],
          shutdownTimeout: Duration.seconds(30),
        }),
      /backendMaxConnections must be a positive integer/,
    );
  });

  it('takes sizes and the pool cap from props', () => {
    const big = synthMain({ taskCpu: 1024, taskMemoryMiB: 2048, backendMaxConnections: 40 });
    const { taskDef: bigTask, container: bigContainer } = sluiceContainer(big.json);
    assert.equal(bigTask.Properties.Cpu, '1024');
    assert.equal(bigTask.Properties.Memory, '2048');
    assert.ok(
      (bigContainer.Environment as any[]).some(
        (e) => e.Name === 'SLUICE_BACKEND_MAX_CONNECTIONS' && e.Value === '40',
      ),
    );
  });

  it('rolls deployments back when new tasks never become healthy', () => {
    assert.deepEqual(service.Properties.DeploymentConfiguration.DeploymentCircuitBreaker, {
      Enable: true,
      Rollback: true,
    });
    assert.equal(service.Properties.DeploymentConfiguration.MinimumHealthyPercent, 100);
  });
});

describe('the Lambda', () => {
  const { stack, json } = synthMain({ databaseName: 'customers' });
  const fn = json.Resources[logicalId(stack.function)]!;
  const attachmentId = onlyResourceOfType(json, 'AWS::SecretsManager::SecretTargetAttachment')[0];
  const nlbId = logicalId(stack.loadBalancer);

  it('is provided.al2023 on arm64 with the bootstrap handler', () => {
    assert.equal(fn.Properties.Runtime, 'provided.al2023');
    assert.deepEqual(fn.Properties.Architectures, ['arm64']);
    assert.equal(fn.Properties.Handler, 'bootstrap');
  });

  it('gets the secret ARN, the NLB name and the database name', () => {
    assert.deepEqual(fn.Properties.Environment.Variables, {
      SECRET_ARN: ref(attachmentId),
      PROXY_ENDPOINT: getAtt(nlbId, 'DNSName'),
      DB_NAME: 'customers',
    });
    const plain = synthMain();
    const plainFn = plain.json.Resources[logicalId(plain.stack.function)]!;
    assert.deepEqual(Object.keys(plainFn.Properties.Environment.Variables).sort(), [
      'PROXY_ENDPOINT',
      'SECRET_ARN',
    ]);
  });

  it('runs in the isolated subnets', () => {
    assert.deepEqual(
      fn.Properties.VpcConfig.SubnetIds.map((s: unknown) => JSON.stringify(s)).sort(),
      stack.vpc.isolatedSubnets.map((s) => JSON.stringify(ref(logicalId(s)))).sort(),
    );
  });

  it('outputs the proxy endpoint, the secret ARN and the function name', () => {
    const outputs = json.Outputs ?? {};
    assert.deepEqual(outputs.ProxyEndpoint?.Value, getAtt(nlbId, 'DNSName'));
    assert.deepEqual(outputs.SecretArn?.Value, ref(attachmentId));
    assert.deepEqual(outputs.FunctionName?.Value, ref(logicalId(stack.function)));
  });
});
