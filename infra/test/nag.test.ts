import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';

import { Stack } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';

import { SidecarExampleStack } from '../lib/sidecar-example-stack';
import { acknowledgements, buildMain, findings, MainProps, newApp } from './helpers';

function stubDockerContext(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-image-'));
  fs.writeFileSync(path.join(dir, 'Dockerfile'), 'FROM scratch\n');
  return dir;
}

describe('cdk-nag AwsSolutions', () => {
  const variants: [string, MainProps][] = [
    ['defaults', {}],
    [
      'image built from the Dockerfile',
      { sluiceImage: ecs.ContainerImage.fromAsset(stubDockerContext()) },
    ],
    ['no deletion protection', { deletionProtection: false }],
    ['Multi-AZ, three tasks', { multiAz: true, taskCount: 3 }],
  ];
  for (const [name, props] of variants) {
    it(`passes on the main stack (${name})`, () => {
      const { stack } = buildMain(props);
      assert.deepEqual(findings(stack), []);
    });
  }

  it('passes on the sidecar example stack', () => {
    const { app, stack } = buildMain();
    const example = new SidecarExampleStack(app, 'Example', {
      vpc: stack.vpc,
      database: stack.database,
      databaseSecurityGroup: stack.databaseSecurityGroup,
      endpointSecurityGroup: stack.endpointSecurityGroup,
      secret: stack.secret,
      sluiceImage: ecs.ContainerImage.fromAsset(stubDockerContext()),
      appRepositoryName: 'app',
      appImageTag: 'v1',
    });
    assert.deepEqual(findings(example), []);
  });

  it('acknowledges each finding with a written reason', () => {
    const { app, stack } = buildMain({
      deletionProtection: false,
      sluiceImage: ecs.ContainerImage.fromAsset(stubDockerContext()),
    });
    // CDK acknowledges some of its own CloudFormation-Validate rules; ours are AwsSolutions.
    const acks = acknowledgements(app).filter((a) => a.id.includes('AwsSolutions-'));
    assert.ok(acks.length >= 6, JSON.stringify(acks));
    for (const { path: where, id, reason } of acks) {
      assert.match(id, /AwsSolutions-[A-Z]+\d+/, `${where}: ${id}`);
      assert.ok(reason.length >= 40, `${where}: ${id} needs a real reason, got "${reason}"`);
    }
    // The ones this configuration needs, and nothing stack-wide.
    const ids = new Set(acks.map((a) => a.id.replace(/^[A-Za-z-]+::/, '')));
    for (const id of [
      'AwsSolutions-SMG4',
      'AwsSolutions-RDS3',
      'AwsSolutions-RDS10',
      'AwsSolutions-RDS11',
      'AwsSolutions-ECS2',
      'AwsSolutions-ELB2',
      'AwsSolutions-IAM5[Resource::*]',
    ]) {
      assert.ok(ids.has(id), `${id} in ${[...ids].join(' ')}`);
    }
    assert.equal(
      acks.some((a) => a.path === stack.node.path || a.path === ''),
      false,
      'no acknowledgement at stack or app level',
    );
  });

  it('acknowledges Multi-AZ and deletion protection only when they are off', () => {
    const ids = acknowledgements(buildMain({ multiAz: true }).app).map((a) => a.id);
    assert.equal(
      ids.some((id) => id.endsWith('AwsSolutions-RDS3') || id.endsWith('AwsSolutions-RDS10')),
      false,
    );
  });

  it('does find problems (the checks are live)', () => {
    const stack = new Stack(newApp(), 'Bad');
    const vpc = new ec2.Vpc(stack, 'Vpc');
    const sg = new ec2.SecurityGroup(stack, 'Open', { vpc });
    sg.addIngressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(3306));
    const found = findings(stack);
    assert.ok(
      found.some((f) => f.startsWith('AwsSolutions-EC23')),
      found.join('\n'),
    );
    assert.ok(
      found.some((f) => f.startsWith('AwsSolutions-VPC7')),
      found.join('\n'),
    );
  });
});
