/**
 * The EC2 Auto Scaling variant (hosting 'ec2', context sluiceHosting=ec2): the group and its
 * launch template, the security groups and IAM, the user data that installs the systemd unit
 * with the Fargate container's environment, cdk-nag, and the checks on the files it installs.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';

import { Duration } from 'aws-cdk-lib';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';

import {
  DEFAULT_RDS_CA_BUNDLE,
  DEFAULT_SLUICE_BINARY,
  sluiceHostFilesFromContext,
  stackSettingsFromContext,
} from '../lib/context';
import { SYSTEMD_UNIT } from '../lib/sluice-hosts';
import {
  acknowledgements,
  asArray,
  buildEc2,
  egressRules,
  fakeElf,
  findings,
  getAtt,
  ingressRules,
  logicalId,
  MainProps,
  newApp,
  onlyResourceOfType,
  policyStatements,
  ref,
  resourcesOfType,
  securityGroupNames,
  stubHostFiles,
  synthEc2,
  synthMain,
  tcp,
  TemplateJson,
} from './helpers';

/** A CloudFormation string value as text, with each intrinsic other than Fn::Join as {{json}}. */
function render(value: unknown): string {
  if (typeof value === 'string') return value;
  const join = (value as { 'Fn::Join'?: [string, unknown[]] })['Fn::Join'];
  if (join) return join[1].map(render).join(join[0]);
  return `{{${JSON.stringify(value)}}}`;
}

function userDataOf(json: TemplateJson): string {
  const [, lt] = onlyResourceOfType(json, 'AWS::EC2::LaunchTemplate');
  return render(lt.Properties.LaunchTemplateData.UserData['Fn::Base64']);
}

/** The lines of the heredoc that user data writes to `file`. */
function writtenFile(userData: string, file: string): string[] {
  const lines = userData.split('\n');
  const start = lines.findIndex((l) => l.includes(`>${file}`) && l.endsWith("<<'EOF'"));
  assert.ok(start >= 0, `user data writes ${file}`);
  const end = lines.indexOf('EOF', start);
  return lines.slice(start + 1, end);
}

/** The Fargate container's environment as VAR=value lines. */
function fargateEnvironment(json: TemplateJson): string[] {
  const [, taskDef] = onlyResourceOfType(json, 'AWS::ECS::TaskDefinition');
  const [container] = taskDef.Properties.ContainerDefinitions as any[];
  return (container.Environment as { Name: string; Value: unknown }[]).map(
    (e) => `${e.Name}=${render(e.Value)}`,
  );
}

const sha256 = (file: string) => createHash('sha256').update(fs.readFileSync(file)).digest('hex');
const sameJson = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

describe('Sluice on EC2: the Auto Scaling group', () => {
  const { app, stack, json } = synthEc2();
  const [asgId, asg] = onlyResourceOfType(json, 'AWS::AutoScaling::AutoScalingGroup');
  const [ltId, lt] = onlyResourceOfType(json, 'AWS::EC2::LaunchTemplate');
  const data = lt.Properties.LaunchTemplateData;
  const [tgId, tg] = onlyResourceOfType(json, 'AWS::ElasticLoadBalancingV2::TargetGroup');

  it('runs no ECS and says so when asked for the service', () => {
    for (const type of ['AWS::ECS::Cluster', 'AWS::ECS::Service', 'AWS::ECS::TaskDefinition']) {
      assert.equal(resourcesOfType(json, type).length, 0, type);
    }
    assert.throws(() => stack.service, /runs Sluice on ec2: there is no ECS service/);
    assert.throws(() => synthMain().stack.hosts, /runs Sluice on fargate: there are no EC2 hosts/);
  });

  it('launches arm64 Amazon Linux 2023, resolved from its SSM parameter at deploy time', () => {
    const parameterId = data.ImageId.Ref as string;
    const parameter = (json as any).Parameters[parameterId];
    assert.equal(parameter.Type, 'AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>');
    assert.match(
      parameter.Default,
      /^\/aws\/service\/ami-amazon-linux-latest\/al2023-ami-kernel-[0-9.a-z]+-arm64$/,
    );
    assert.equal(data.InstanceType, 't4g.small');
    // Nothing was looked up (no credentials needed): the cloud assembly misses no context.
    assert.equal(app.synth().manifest.missing, undefined);
  });

  it('requires IMDSv2 with one hop, encrypts the root volume, monitors in detail, has no key pair', () => {
    assert.deepEqual(data.MetadataOptions, {
      HttpEndpoint: 'enabled',
      HttpPutResponseHopLimit: 1,
      HttpTokens: 'required',
      InstanceMetadataTags: 'disabled',
    });
    assert.deepEqual(data.BlockDeviceMappings, [
      {
        DeviceName: '/dev/xvda',
        Ebs: { DeleteOnTermination: true, Encrypted: true, VolumeSize: 10, VolumeType: 'gp3' },
      },
    ]);
    assert.deepEqual(data.Monitoring, { Enabled: true });
    assert.equal(data.KeyName, undefined);
    assert.equal(data.NetworkInterfaces, undefined, 'no public address can be asked for');
  });

  it('runs two instances (min 2, max 3) in the isolated subnets of both zones', () => {
    assert.equal(asg.Properties.DesiredCapacity, '2');
    assert.equal(asg.Properties.MinSize, '2');
    assert.equal(asg.Properties.MaxSize, '3');
    assert.deepEqual(
      asg.Properties.VPCZoneIdentifier.map((s: unknown) => JSON.stringify(s)).sort(),
      stack.vpc.isolatedSubnets.map((s) => JSON.stringify(ref(logicalId(s)))).sort(),
    );
    assert.deepEqual(asg.Properties.LaunchTemplate, {
      LaunchTemplateId: ref(ltId),
      Version: getAtt(ltId, 'LatestVersionNumber'),
    });
  });

  it('sits behind the same NLB listener, /readyz health check and drain time as Fargate', () => {
    const [nlbId] = onlyResourceOfType(json, 'AWS::ElasticLoadBalancingV2::LoadBalancer');
    const [, listener] = onlyResourceOfType(json, 'AWS::ElasticLoadBalancingV2::Listener');
    assert.equal(listener.Properties.Port, 3306);
    assert.equal(listener.Properties.Protocol, 'TCP');
    assert.deepEqual(listener.Properties.LoadBalancerArn, ref(nlbId));
    assert.deepEqual(listener.Properties.DefaultActions, [
      { Type: 'forward', TargetGroupArn: ref(tgId) },
    ]);
    assert.equal(tg.Properties.TargetType, 'instance');
    assert.equal(tg.Properties.Port, 3306);
    assert.equal(tg.Properties.HealthCheckProtocol, 'HTTP');
    assert.equal(tg.Properties.HealthCheckPort, '9090');
    assert.equal(tg.Properties.HealthCheckPath, '/readyz');
    assert.deepEqual(tg.Properties.Matcher, { HttpCode: '200' });
    const attributes = Object.fromEntries(
      (tg.Properties.TargetGroupAttributes as { Key: string; Value: string }[]).map((a) => [
        a.Key,
        a.Value,
      ]),
    );
    // Instance targets would otherwise keep the client's address, which the Sluice group
    // does not admit.
    assert.deepEqual(attributes, {
      'deregistration_delay.timeout_seconds': '30',
      'preserve_client_ip.enabled': 'false',
    });
    assert.deepEqual(asg.Properties.TargetGroupARNs, [ref(tgId)]);
    assert.equal(asg.Properties.HealthCheckType, 'ELB');
    assert.equal(asg.Properties.HealthCheckGracePeriod, 300);
  });

  it('waits for every new instance to be ready and replaces one at a time', () => {
    assert.deepEqual((asg as any).CreationPolicy, {
      ResourceSignal: { Count: 2, Timeout: 'PT15M' },
    });
    const rolling = (asg as any).UpdatePolicy.AutoScalingRollingUpdate;
    assert.equal(rolling.MaxBatchSize, 1);
    assert.equal(rolling.MinInstancesInService, 2);
    assert.equal(rolling.WaitOnResourceSignals, true);
    assert.equal(rolling.PauseTime, 'PT15M');
    // Instances start only once the database, the secret and the role's policy exist.
    const dependsOn = asg.DependsOn ?? [];
    for (const id of [
      logicalId(stack.database),
      logicalId(stack.hosts.role),
      logicalId(stack.hosts.role.node.findChild('DefaultPolicy')),
    ]) {
      assert.ok(dependsOn.includes(id), `${asgId} depends on ${id}: ${dependsOn}`);
    }
  });

  it('keeps at least one instance in service whatever the counts', () => {
    const rollingOf = (props: MainProps) => {
      const s = synthEc2(props).json;
      const [, group] = onlyResourceOfType(s, 'AWS::AutoScaling::AutoScalingGroup');
      return {
        desired: group.Properties.DesiredCapacity,
        min: group.Properties.MinSize,
        max: group.Properties.MaxSize,
        inService: (group as any).UpdatePolicy.AutoScalingRollingUpdate.MinInstancesInService,
        signals: (group as any).CreationPolicy.ResourceSignal.Count,
      };
    };
    assert.deepEqual(rollingOf({ instanceCount: 1 }), {
      desired: '1',
      min: '1',
      max: '2',
      inService: 1,
      signals: 1,
    });
    // No headroom: one instance is replaced while the other serves.
    assert.deepEqual(rollingOf({ instanceCount: 2, maxInstances: 2 }), {
      desired: '2',
      min: '2',
      max: '2',
      inService: 1,
      signals: 2,
    });
    assert.throws(
      () => synthEc2({ instanceCount: 1, maxInstances: 1 }),
      /maxInstances must be at least 2 so a rolling update keeps one instance in service/,
    );
    assert.throws(
      () => synthEc2({ instanceCount: 4, maxInstances: 3 }),
      /minInstances <= instanceCount <= maxInstances/,
    );
  });

  it('takes an arm64 instance type and refuses others', () => {
    const big = synthEc2({ instanceType: new ec2.InstanceType('m7g.large') }).json;
    assert.equal(
      onlyResourceOfType(big, 'AWS::EC2::LaunchTemplate')[1].Properties.LaunchTemplateData
        .InstanceType,
      'm7g.large',
    );
    assert.throws(
      () => synthEc2({ instanceType: new ec2.InstanceType('t3.small') }),
      /instanceType t3.small is not arm64/,
    );
  });

  it('keeps the stack outputs', () => {
    const outputs = json.Outputs ?? {};
    const nlbId = logicalId(stack.loadBalancer);
    const attachmentId = onlyResourceOfType(json, 'AWS::SecretsManager::SecretTargetAttachment')[0];
    assert.deepEqual(Object.keys(outputs).sort(), ['FunctionName', 'ProxyEndpoint', 'SecretArn']);
    assert.deepEqual(outputs.ProxyEndpoint?.Value, getAtt(nlbId, 'DNSName'));
    assert.deepEqual(outputs.SecretArn?.Value, ref(attachmentId));
    assert.deepEqual(outputs.FunctionName?.Value, ref(logicalId(stack.function)));
  });

  it('changes nothing else: the rest of the stack is the Fargate variant resource for resource', () => {
    const fargate = synthMain().json;
    const onlyFargate = Object.keys(fargate.Resources).filter((id) => !(id in json.Resources));
    const onlyEc2 = Object.keys(json.Resources).filter((id) => !(id in fargate.Resources));
    assert.deepEqual([...new Set(onlyFargate.map((id) => fargate.Resources[id]!.Type))].sort(), [
      'AWS::ECS::Cluster',
      'AWS::ECS::Service',
      'AWS::ECS::TaskDefinition',
      'AWS::IAM::Policy',
      'AWS::IAM::Role',
      'AWS::Logs::LogGroup',
    ]);
    assert.deepEqual(onlyEc2.map((id) => json.Resources[id]!.Type).sort(), [
      'AWS::AutoScaling::AutoScalingGroup',
      'AWS::EC2::LaunchTemplate',
      'AWS::EC2::VPCEndpoint',
      'AWS::IAM::InstanceProfile',
      'AWS::IAM::Policy',
      'AWS::IAM::Role',
    ]);
    const changed = Object.keys(fargate.Resources)
      .filter((id) => id in json.Resources)
      .filter((id) => !sameJson(fargate.Resources[id], json.Resources[id]));
    // The Sluice group's description names instances, and the target group's type.
    assert.deepEqual(changed.sort(), [logicalId(stack.sluiceSecurityGroup), tgId].sort());
  });
});

describe('Sluice on EC2: network and security groups', () => {
  const { stack, json } = synthEc2();
  const names = securityGroupNames(stack);

  it('admits exactly the Fargate chain: no SSH, nothing but the NLB reaches the instances', () => {
    const expected = [
      tcp('nlb', 'lambda', 3306),
      tcp('sluice', 'nlb', 3306),
      tcp('sluice', 'nlb', 9090),
      tcp('rds', 'sluice', 3306),
      tcp('endpoints', 'lambda', 443),
      tcp('endpoints', 'sluice', 443),
    ].sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));
    assert.deepEqual(ingressRules(json, names), expected);
    const fargate = synthMain();
    assert.deepEqual(
      ingressRules(json, names),
      ingressRules(fargate.json, securityGroupNames(fargate.stack)),
    );
    assert.deepEqual(
      egressRules(json, names),
      egressRules(fargate.json, securityGroupNames(fargate.stack)),
    );
  });

  it('gives the launch template the Sluice group and nothing else', () => {
    const [, lt] = onlyResourceOfType(json, 'AWS::EC2::LaunchTemplate');
    assert.deepEqual(lt.Properties.LaunchTemplateData.SecurityGroupIds, [
      getAtt(logicalId(stack.sluiceSecurityGroup), 'GroupId'),
    ]);
    assert.equal(resourcesOfType(json, 'AWS::EC2::SecurityGroup').length, 5);
  });

  it("adds a CloudFormation endpoint (the hosts' signals) to Fargate's endpoints", () => {
    const services = (j: TemplateJson) =>
      resourcesOfType(j, 'AWS::EC2::VPCEndpoint')
        .map(([, e]) => render(e.Properties.ServiceName).replace(/^.*\}\}\./, ''))
        .sort();
    assert.deepEqual(services(json), [
      'cloudformation',
      'ecr.api',
      'ecr.dkr',
      'kms',
      'logs',
      's3',
      'secretsmanager',
    ]);
    assert.deepEqual(services(synthMain().json), [
      'ecr.api',
      'ecr.dkr',
      'kms',
      'logs',
      's3',
      'secretsmanager',
    ]);
    const [, cfn] = resourcesOfType(json, 'AWS::EC2::VPCEndpoint').find(([, e]) =>
      render(e.Properties.ServiceName).endsWith('.cloudformation'),
    )!;
    assert.equal(cfn.Properties.PrivateDnsEnabled, true);
    assert.deepEqual(cfn.Properties.SecurityGroupIds, [
      getAtt(logicalId(stack.endpointSecurityGroup), 'GroupId'),
    ]);
  });
});

describe('Sluice on EC2: IAM', () => {
  const { stack, json } = synthEc2();
  const statements = policyStatements(json);
  const roleId = logicalId(stack.hosts.role);
  const attachmentId = onlyResourceOfType(json, 'AWS::SecretsManager::SecretTargetAttachment')[0];
  const [keyId] = onlyResourceOfType(json, 'AWS::KMS::Key');
  const mine = statements
    .filter((s) => s.roles.some((r) => sameJson(r, ref(roleId))))
    .map((s) => s.statement);
  const objectArn = (key: string) => ({
    'Fn::Join': [
      '',
      [
        'arn:',
        { Ref: 'AWS::Partition' },
        ':s3:::',
        { 'Fn::Sub': 'cdk-hnb659fds-assets-${AWS::AccountId}-${AWS::Region}' },
        `/${key}`,
      ],
    ],
  });

  it('lets the instances read the one secret, decrypt with the one key, read the three files, signal', () => {
    const files = stack.hosts.files;
    assert.deepEqual(mine, [
      {
        Sid: 'ReadTheDatabaseSecret',
        Effect: 'Allow',
        Action: ['secretsmanager:DescribeSecret', 'secretsmanager:GetSecretValue'],
        Resource: ref(attachmentId),
      },
      {
        Sid: 'DecryptTheDatabaseSecret',
        Effect: 'Allow',
        Action: 'kms:Decrypt',
        Resource: getAtt(keyId, 'Arn'),
        Condition: {
          StringEquals: {
            'kms:ViaService': {
              'Fn::Join': ['', ['secretsmanager.', { Ref: 'AWS::Region' }, '.amazonaws.com']],
            },
          },
        },
      },
      {
        Sid: 'ReadTheSluiceFiles',
        Effect: 'Allow',
        Action: 's3:GetObject',
        Resource: [files.caBundle, files.binary, files.unit]
          .map((a) => objectArn(a.s3ObjectKey))
          .sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b))),
      },
      {
        Effect: 'Allow',
        Action: 'cloudformation:SignalResource',
        Resource: { Ref: 'AWS::StackId' },
      },
    ]);
  });

  it('attaches no managed policy (no SSM) and the profile holds only that role', () => {
    const role = json.Resources[roleId]!;
    assert.equal(role.Properties.ManagedPolicyArns, undefined);
    assert.deepEqual(role.Properties.AssumeRolePolicyDocument.Statement, [
      {
        Action: 'sts:AssumeRole',
        Effect: 'Allow',
        Principal: { Service: 'ec2.amazonaws.com' },
      },
    ]);
    const [profileId, profile] = onlyResourceOfType(json, 'AWS::IAM::InstanceProfile');
    assert.deepEqual(profile.Properties.Roles, [ref(roleId)]);
    const [, lt] = onlyResourceOfType(json, 'AWS::EC2::LaunchTemplate');
    assert.deepEqual(lt.Properties.LaunchTemplateData.IamInstanceProfile, {
      Arn: getAtt(profileId, 'Arn'),
    });
  });

  it('has no wildcard action or resource anywhere, and secrets and keys named exactly', () => {
    for (const { policy, statement } of statements) {
      for (const action of asArray<string>(statement.Action)) {
        assert.doesNotMatch(action, /\*/, `${policy}: ${action}`);
      }
      for (const resource of asArray<unknown>(statement.Resource)) {
        assert.notEqual(resource, '*', `${policy}: ${JSON.stringify(statement)}`);
        assert.doesNotMatch(
          JSON.stringify(resource),
          /\*/,
          `${policy}: ${JSON.stringify(statement)}`,
        );
      }
      const services = new Set(asArray<string>(statement.Action).map((a) => a.split(':')[0]));
      if (services.has('secretsmanager')) assert.deepEqual(statement.Resource, ref(attachmentId));
      if (services.has('kms')) assert.deepEqual(statement.Resource, getAtt(keyId, 'Arn'));
    }
    const secretReaders = statements.filter((s) =>
      asArray<string>(s.statement.Action).includes('secretsmanager:GetSecretValue'),
    );
    assert.equal(secretReaders.length, 2, 'the instances and the Lambda');
  });
});

describe('Sluice on EC2: user data', () => {
  const { stack, json } = synthEc2();
  const userData = userDataOf(json);
  const lines = userData.split('\n');
  const files = stack.hosts.files;
  const asgId = logicalId(stack.hosts.autoScalingGroup);
  const bucket = '{{{"Fn::Sub":"cdk-hnb659fds-assets-${AWS::AccountId}-${AWS::Region}"}}}';

  it('is a bash script that parses', () => {
    assert.equal(lines[0], '#!/bin/bash');
    assert.ok(lines.includes('set -Eeuo pipefail'));
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-ud-')), 'user-data.sh');
    fs.writeFileSync(file, userData);
    execFileSync('bash', ['-n', file]);
  });

  it("installs the binary where the unit runs it, the repository's unit, and the CA bundle", () => {
    const host = stubHostFiles();
    const fetches = lines.filter((l) => l.startsWith('fetch '));
    assert.deepEqual(fetches, [
      `fetch 's3://${bucket}/${files.binary.s3ObjectKey}' /usr/local/bin/sluice 0755 ${sha256(host.sluiceBinary)}`,
      `fetch 's3://${bucket}/${files.unit.s3ObjectKey}' /etc/systemd/system/sluice.service 0644 ${sha256(SYSTEMD_UNIT)}`,
      `fetch 's3://${bucket}/${files.caBundle.s3ObjectKey}' /etc/sluice/rds-ca.pem 0444 ${sha256(host.rdsCaBundle)}`,
    ]);
    assert.equal(
      path.relative(path.resolve(__dirname, '..', '..'), SYSTEMD_UNIT),
      path.join('deploy', 'systemd', 'sluice.service'),
    );
    const unit = fs.readFileSync(SYSTEMD_UNIT, 'utf8');
    assert.match(unit, /^ExecStart=\/usr\/local\/bin\/sluice$/m);
    assert.match(unit, /^EnvironmentFile=-\/etc\/sluice\/sluice\.env$/m);
    assert.match(unit, /^Environment=SLUICE_CONFIG=\/etc\/sluice\/sluice\.toml$/m);
    // Downloads are checked before they are installed.
    assert.ok(lines.some((l) => l.includes('sha256sum --check')));
    assert.ok(lines.includes('/usr/local/bin/sluice --version'));
    assert.deepEqual(
      writtenFile(userData, '/etc/sluice/sluice.toml').filter((l) => !l.startsWith('#')),
      [],
    );
  });

  it('writes the same SLUICE_* environment the Fargate container gets, plus AWS_REGION', () => {
    for (const props of [
      {},
      { backendMaxConnections: 40, shutdownTimeout: Duration.seconds(60), databaseName: 'x' },
    ] as MainProps[]) {
      const env = writtenFile(userDataOf(synthEc2(props).json), '/etc/sluice/sluice.env');
      assert.deepEqual(env, [
        ...fargateEnvironment(synthMain(props).json),
        'AWS_REGION={{{"Ref":"AWS::Region"}}}',
      ]);
    }
    const env = writtenFile(userData, '/etc/sluice/sluice.env');
    assert.ok(env.includes('SLUICE_BACKEND_TLS_CA_FILE=/etc/sluice/rds-ca.pem'));
    assert.ok(env.includes('SLUICE_SHUTDOWN_TIMEOUT=30s'));
    assert.ok(lines.includes("(umask 077 && cat >/etc/sluice/sluice.env) <<'EOF'"));
  });

  it("gives systemd the same stop deadline as ECS: Sluice's own plus 5 s", () => {
    const dropIn = '/etc/systemd/system/sluice.service.d/50-shutdown.conf';
    assert.deepEqual(writtenFile(userData, dropIn), ['[Service]', 'TimeoutStopSec=35s']);
    const slow = userDataOf(synthEc2({ shutdownTimeout: Duration.seconds(60) }).json);
    assert.deepEqual(writtenFile(slow, dropIn), ['[Service]', 'TimeoutStopSec=65s']);
    const [, tg] = onlyResourceOfType(
      synthEc2({ shutdownTimeout: Duration.seconds(60) }).json,
      'AWS::ElasticLoadBalancingV2::TargetGroup',
    );
    assert.ok(
      (tg.Properties.TargetGroupAttributes as any[]).some(
        (a) => a.Key === 'deregistration_delay.timeout_seconds' && a.Value === '60',
      ),
    );
  });

  it('starts the unit and signals its own group: SUCCESS on /readyz, FAILURE otherwise', () => {
    const start = lines.indexOf('systemctl enable --now sluice.service');
    assert.ok(start > lines.indexOf('systemctl daemon-reload'));
    assert.ok(start > lines.findIndex((l) => l.startsWith('fetch ')));
    assert.ok(
      lines.includes(
        `readonly region='{{{"Ref":"AWS::Region"}}}' stack='{{{"Ref":"AWS::StackId"}}}' resource='${asgId}'`,
      ),
    );
    assert.ok(
      lines.some((l) =>
        l.includes('curl -fs -o /dev/null --max-time 3 http://127.0.0.1:9090/readyz'),
      ),
    );
    const success = lines.findIndex((l) => l.trim().startsWith('signal SUCCESS'));
    assert.ok(success > start);
    // A launch no deployment waits for (a replacement) is refused the signal and still serves.
    assert.match(lines[success]!, /^ {4}signal SUCCESS \|\| echo /);
    assert.equal(lines[success + 1], '    exit 0');
    assert.ok(lines.includes('  signal FAILURE'));
    assert.ok(lines.includes("trap 'failed $LINENO' ERR"));
    assert.ok(userData.includes('aws cloudformation signal-resource'));
    // The instance ID comes from IMDSv2 (a token first).
    assert.ok(userData.includes('-X PUT'));
    assert.ok(userData.includes('X-aws-ec2-metadata-token'));
  });
});

describe('Sluice on EC2: the files it installs, and what it refuses', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bad-'));
  const file = (name: string, contents: Buffer | string) => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, contents);
    return p;
  };

  it('refuses a missing binary, naming the build command', () => {
    assert.throws(
      () => synthEc2({ sluiceBinary: path.join(dir, 'nope') }),
      (e: Error) =>
        e.message.includes('does not exist') &&
        e.message.includes(
          'cargo zigbuild --release --locked --target aarch64-unknown-linux-gnu.2.34 -p sluice',
        ) &&
        e.message.includes('-c sluiceBinary='),
    );
  });

  it('refuses an x86_64 build, a non-ELF file and a binary that needs glibc newer than 2.34', () => {
    assert.throws(
      () => synthEc2({ sluiceBinary: file('x86', fakeElf(62)) }),
      /built for ELF machine 62, not aarch64/,
    );
    assert.throws(
      () => synthEc2({ sluiceBinary: file('script', '#!/bin/sh\n') }),
      /not a 64-bit little-endian ELF executable/,
    );
    assert.throws(
      () => synthEc2({ sluiceBinary: file('new-glibc', fakeElf(183, '\0GLIBC_2.36\0')) }),
      /needs glibc 2.36, and Amazon Linux 2023 has 2.34/,
    );
    // A static build names no glibc version at all.
    synthEc2({ sluiceBinary: file('static', fakeElf(183)) });
  });

  it('refuses a missing or empty CA bundle, naming where to get it', () => {
    assert.throws(
      () => synthEc2({ rdsCaBundle: path.join(dir, 'nope.pem') }),
      /truststore\.pki\.rds\.amazonaws\.com\/global\/global-bundle\.pem/,
    );
    assert.throws(
      () => synthEc2({ rdsCaBundle: file('empty.pem', '') }),
      /holds no PEM certificate/,
    );
  });

  it('refuses settings of the other hosting', () => {
    assert.throws(() => synthEc2({ taskCount: 3 }), /taskCount: only for fargate hosting/);
    assert.throws(() => synthMain({ instanceCount: 3 }), /instanceCount: only for ec2 hosting/);
    assert.throws(
      () => synthEc2({ sluiceBinary: undefined }),
      /EC2 hosting needs sluiceBinary and rdsCaBundle/,
    );
  });
});

describe('Sluice on EC2: context', () => {
  it('chooses the hosting and reads the instance settings', () => {
    const s = stackSettingsFromContext(
      newApp({
        sluiceHosting: 'ec2',
        instanceType: 'c7g.large',
        instanceCount: '3',
        minInstances: '2',
        maxInstances: '5',
      }).node,
    );
    assert.equal(s.hosting, 'ec2');
    assert.equal(s.instanceType?.toString(), 'c7g.large');
    assert.equal(s.instanceCount, 3);
    assert.equal(s.minInstances, 2);
    assert.equal(s.maxInstances, 5);
    assert.equal(
      stackSettingsFromContext(newApp({ sluiceHosting: 'fargate' }).node).hosting,
      'fargate',
    );
    assert.equal(stackSettingsFromContext(newApp().node).hosting, undefined);
    assert.throws(
      () => stackSettingsFromContext(newApp({ sluiceHosting: 'lambda' }).node),
      /context sluiceHosting: expected fargate or ec2, got "lambda"/,
    );
  });

  it('finds the binary and the CA bundle under target/ unless told, relative paths from the cwd', () => {
    assert.deepEqual(sluiceHostFilesFromContext(newApp().node), {
      sluiceBinary: DEFAULT_SLUICE_BINARY,
      rdsCaBundle: DEFAULT_RDS_CA_BUNDLE,
    });
    assert.match(DEFAULT_SLUICE_BINARY, /target\/aarch64-unknown-linux-gnu\/release\/sluice$/);
    assert.deepEqual(
      sluiceHostFilesFromContext(newApp({ sluiceBinary: 'a/sluice', rdsCaBundle: '/b.pem' }).node),
      { sluiceBinary: path.resolve('a/sluice'), rdsCaBundle: '/b.pem' },
    );
  });
});

describe('Sluice on EC2: cdk-nag AwsSolutions', () => {
  for (const [name, props] of [
    ['defaults', {}],
    [
      'Multi-AZ, three instances, no deletion protection',
      { multiAz: true, instanceCount: 3, deletionProtection: false },
    ],
    [
      'with an image asset passed but unused',
      { sluiceImage: ecs.ContainerImage.fromRegistry('x/y:z') },
    ],
  ] as [string, MainProps][]) {
    it(`passes on the main stack (${name})`, () => {
      assert.deepEqual(findings(buildEc2(props).stack), []);
    });
  }

  it('acknowledges each finding on its resource with a written reason', () => {
    const { app, stack } = buildEc2();
    const acks = acknowledgements(app).filter((a) => a.id.includes('AwsSolutions-'));
    for (const { path: where, id, reason } of acks) {
      assert.ok(reason.length >= 40, `${where}: ${id} needs a real reason, got "${reason}"`);
      assert.notEqual(where, stack.node.path, 'no stack-wide acknowledgement');
    }
    const ids = acks.map((a) => a.id.replace(/^[A-Za-z-]+::/, '')).sort();
    // The Fargate ones (ECS2, the execution role's IAM5) are gone; AS3 is the only new one,
    // and the instance role needs none (no managed policy, no wildcard).
    assert.deepEqual(ids, [
      'AwsSolutions-AS3',
      'AwsSolutions-ELB2',
      'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
      'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]',
      'AwsSolutions-RDS11',
      'AwsSolutions-RDS3',
      'AwsSolutions-SMG4',
    ]);
    const as3 = acks.find((a) => a.id.endsWith('AwsSolutions-AS3'))!;
    assert.equal(as3.path, stack.hosts.autoScalingGroup.node.path);
  });

  it('flags a group without notifications, so the AS3 acknowledgement is not idle', () => {
    const { stack } = buildEc2();
    const bare = new autoscaling.AutoScalingGroup(stack, 'Bare', {
      vpc: stack.vpc,
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_ISOLATED },
      launchTemplate: stack.hosts.launchTemplate,
    });
    assert.ok(
      findings(stack).some((f) => f === `AwsSolutions-AS3: ${bare.node.path}/ASG`),
      findings(stack).join('\n'),
    );
  });
});
