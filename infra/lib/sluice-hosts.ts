/**
 * Sluice on EC2 (context sluiceHosting=ec2): an Auto Scaling group of arm64 Amazon Linux 2023
 * instances in the isolated subnets, each running the repository's systemd unit
 * (deploy/systemd/sluice.service) with the same SLUICE_* environment the Fargate container gets.
 *
 * The instances have no route to the internet, so everything they install comes from this
 * stack's file assets in the CDK asset bucket, through the S3 gateway endpoint: the aarch64
 * `sluice` binary, the unit file and the RDS CA bundle. User data checks each file against the
 * SHA-256 computed at synth, writes /etc/sluice (configuration and environment), starts the
 * unit, and signals CloudFormation once GET /readyz answers 200: stack creation and every
 * rolling update (one instance at a time) wait for a ready Sluice, and a host that never gets
 * ready fails the deployment instead of replacing a working one.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { Annotations, Aws, Duration, Token, Validations } from 'aws-cdk-lib';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as s3assets from 'aws-cdk-lib/aws-s3-assets';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';

import { grantSecretRead } from './grants';
import {
  HEALTH_PORT,
  RDS_CA_FILE,
  SluiceSettings,
  sluiceEnvironment,
  stopTimeoutFor,
} from './sluice-container';

/** The repository's systemd unit, installed unchanged on every host. */
export const SYSTEMD_UNIT = path.resolve(
  __dirname,
  '..',
  '..',
  'deploy',
  'systemd',
  'sluice.service',
);
/** Amazon Linux 2023's glibc is 2.34: a binary that needs a newer one does not start there. */
export const AL2023_GLIBC_MINOR = 34;
/** The build command infra/README.md documents (zig links against glibc 2.34). */
export const BUILD_COMMAND =
  'cargo zigbuild --release --locked --target aarch64-unknown-linux-gnu.2.34 -p sluice --bin sluice';
/** Where the unit expects things (see deploy/systemd/sluice.service). */
export const HOST_PATHS = {
  binary: '/usr/local/bin/sluice',
  unit: '/etc/systemd/system/sluice.service',
  dropIn: '/etc/systemd/system/sluice.service.d/50-shutdown.conf',
  config: '/etc/sluice/sluice.toml',
  environment: '/etc/sluice/sluice.env',
  caBundle: RDS_CA_FILE,
} as const;
/** How long a new host may take from launch to its CloudFormation signal. */
export const SIGNAL_TIMEOUT = Duration.minutes(15);
/** How long user data waits for GET /readyz after starting the unit (inside SIGNAL_TIMEOUT). */
export const READY_TIMEOUT = Duration.minutes(10);

const EM_AARCH64 = 183;

/**
 * Checks that `file` is an aarch64 Linux executable that runs on Amazon Linux 2023, so a host
 * build (x86_64) or a binary linked against a newer glibc fails synth, not the instances.
 */
export function checkSluiceBinary(file: string): void {
  if (!fs.existsSync(file) || !fs.statSync(file).isFile()) {
    throw new Error(
      `The Sluice binary ${file} does not exist. Build it for arm64 from the repository root with\n` +
        `    ${BUILD_COMMAND}\n` +
        '(cargo-zigbuild and ziglang install from PyPI: pip install cargo-zigbuild ziglang; ' +
        'rustup target add aarch64-unknown-linux-gnu), or point -c sluiceBinary=PATH at an ' +
        'aarch64 Linux build of sluice.',
    );
  }
  const bytes = fs.readFileSync(file);
  const isElf = bytes.subarray(0, 4).equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
  // 64-bit, little-endian, e_machine at offset 18.
  if (!isElf || bytes.length < 20 || bytes[4] !== 2 || bytes[5] !== 1) {
    throw new Error(`${file} is not a 64-bit little-endian ELF executable`);
  }
  const machine = bytes.readUInt16LE(18);
  if (machine !== EM_AARCH64) {
    throw new Error(
      `${file} is built for ELF machine ${machine}, not aarch64 (${EM_AARCH64}): the hosts are ` +
        `arm64 (Graviton). Build it with\n    ${BUILD_COMMAND}`,
    );
  }
  // The versions a dynamically linked binary needs are named in its version table.
  let highest = 0;
  for (const m of bytes.toString('latin1').matchAll(/GLIBC_2\.(\d+)/g)) {
    highest = Math.max(highest, Number(m[1]));
  }
  if (highest > AL2023_GLIBC_MINOR) {
    throw new Error(
      `${file} needs glibc 2.${highest}, and Amazon Linux 2023 has 2.${AL2023_GLIBC_MINOR}. ` +
        `Build it against 2.${AL2023_GLIBC_MINOR} with\n    ${BUILD_COMMAND}`,
    );
  }
}

/** Checks that `file` is a PEM bundle of certificates (what Sluice verifies RDS against). */
export function checkCaBundle(file: string): void {
  if (!fs.existsSync(file) || !fs.statSync(file).isFile()) {
    throw new Error(
      `The RDS CA bundle ${file} does not exist. Download it with\n` +
        `    curl -fsSL --create-dirs -o ${file} ` +
        'https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem\n' +
        'or point -c rdsCaBundle=PATH at a copy you have reviewed.',
    );
  }
  if (!fs.readFileSync(file, 'latin1').includes('-----BEGIN CERTIFICATE-----')) {
    throw new Error(`${file} holds no PEM certificate`);
  }
}

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** Literal values go into the environment file verbatim: nothing systemd would reinterpret. */
function checkEnvironmentValue(name: string, value: string): void {
  if (!Token.isUnresolved(value) && !/^[A-Za-z0-9_.:/,=@+-]*$/.test(value)) {
    throw new Error(`${name}=${JSON.stringify(value)} cannot go into ${HOST_PATHS.environment}`);
  }
}

export interface SluiceHostsProps {
  readonly vpc: ec2.IVpc;
  /** Where the instances run (the isolated subnets, across the zones). */
  readonly vpcSubnets: ec2.SubnetSelection;
  /** The Sluice security group (MySQL and health checks from the NLB only). */
  readonly securityGroup: ec2.ISecurityGroup;
  /** Sluice's settings: the same object the Fargate variant would give its container. */
  readonly settings: SluiceSettings;
  /** The database secret the instances may read (and decrypt, through Secrets Manager). */
  readonly secret: secretsmanager.ISecret;
  /** An aarch64 Linux build of `sluice` (glibc 2.34 or older, or static). */
  readonly binary: string;
  /** The RDS CA bundle (PEM). */
  readonly rdsCaBundle: string;
  /** An arm64 (Graviton) instance type (default t4g.small). */
  readonly instanceType?: ec2.InstanceType;
  /** Instances to run (default 2). */
  readonly desiredCapacity?: number;
  /** Auto Scaling minimum (default desiredCapacity). */
  readonly minCapacity?: number;
  /**
   * Auto Scaling maximum (default desiredCapacity + 1: room for a rolling update to start a
   * new instance before stopping an old one).
   */
  readonly maxCapacity?: number;
}

export class SluiceHosts extends Construct {
  readonly autoScalingGroup: autoscaling.AutoScalingGroup;
  readonly launchTemplate: ec2.LaunchTemplate;
  readonly role: iam.Role;
  readonly userData: ec2.UserData;
  /** The files every instance downloads: binary, unit and CA bundle. */
  readonly files: { binary: s3assets.Asset; unit: s3assets.Asset; caBundle: s3assets.Asset };
  /** What user data writes to /etc/sluice/sluice.env. */
  readonly environment: Record<string, string>;
  /** The rolling update's MinInstancesInService. */
  readonly minInstancesInService: number;

  constructor(scope: Construct, id: string, props: SluiceHostsProps) {
    super(scope, id);
    const desired = positive('instanceCount', props.desiredCapacity ?? 2);
    const min = positive('minInstances', props.minCapacity ?? desired);
    const max = positive('maxInstances', props.maxCapacity ?? desired + 1);
    if (!(min <= desired && desired <= max)) {
      throw new Error(
        `instances: need minInstances <= instanceCount <= maxInstances, got ${min}, ${desired}, ${max}`,
      );
    }
    // CloudFormation requires MinInstancesInService < MaxSize; at least one instance keeps
    // serving while another is replaced.
    this.minInstancesInService = Math.min(desired, max - 1);
    if (this.minInstancesInService < 1) {
      throw new Error(
        `maxInstances must be at least 2 so a rolling update keeps one instance in service, got ${max}`,
      );
    }
    const instanceType =
      props.instanceType ??
      ec2.InstanceType.of(ec2.InstanceClass.BURSTABLE4_GRAVITON, ec2.InstanceSize.SMALL);
    if (instanceType.architecture !== ec2.InstanceArchitecture.ARM_64) {
      throw new Error(
        `instanceType ${instanceType} is not arm64: the AMI and the binary are arm64 (Graviton)`,
      );
    }
    checkSluiceBinary(props.binary);
    checkCaBundle(props.rdsCaBundle);

    // ---- What the instances download ---------------------------------------------------------
    this.files = {
      binary: new s3assets.Asset(this, 'Binary', { path: props.binary }),
      unit: new s3assets.Asset(this, 'Unit', { path: SYSTEMD_UNIT }),
      caBundle: new s3assets.Asset(this, 'RdsCaBundle', { path: props.rdsCaBundle }),
    };

    // ---- The instance role: the secret, the three objects, its own signal ------------------
    this.role = new iam.Role(this, 'InstanceRole', {
      assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
      description: 'Sluice EC2 hosts: the database secret, the Sluice files, the deploy signal',
    });
    grantSecretRead(this.role, props.secret);
    // Exactly the three objects, not the asset bucket (Asset.grantRead would grant the bucket).
    this.role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        sid: 'ReadTheSluiceFiles',
        actions: ['s3:GetObject'],
        resources: Object.values(this.files).map((a) => a.bucket.arnForObjects(a.s3ObjectKey)),
      }),
    );
    // cloudformation:SignalResource on this stack comes with the group's `signals` below.

    // ---- Launch template and group ----------------------------------------------------------
    this.userData = ec2.UserData.forLinux();
    this.launchTemplate = new ec2.LaunchTemplate(this, 'LaunchTemplate', {
      // Resolved from the public SSM parameter at deploy time: synth needs no lookup.
      machineImage: ec2.MachineImage.latestAmazonLinux2023({
        cpuType: ec2.AmazonLinuxCpuType.ARM_64,
      }),
      instanceType,
      role: this.role,
      securityGroup: props.securityGroup,
      userData: this.userData,
      httpEndpoint: true,
      httpTokens: ec2.LaunchTemplateHttpTokens.REQUIRED,
      // Sluice runs on the host, not in a container: one hop is all it needs.
      httpPutResponseHopLimit: 1,
      instanceMetadataTags: false,
      detailedMonitoring: true,
      blockDevices: [
        {
          deviceName: '/dev/xvda',
          volume: ec2.BlockDeviceVolume.ebs(10, {
            encrypted: true,
            volumeType: ec2.EbsDeviceVolumeType.GP3,
            deleteOnTermination: true,
          }),
        },
      ],
    });

    this.autoScalingGroup = new autoscaling.AutoScalingGroup(this, 'Group', {
      vpc: props.vpc,
      vpcSubnets: props.vpcSubnets,
      launchTemplate: this.launchTemplate,
      desiredCapacity: desired,
      minCapacity: min,
      maxCapacity: max,
      // The NLB's /readyz check decides health, as for the Fargate tasks.
      healthChecks: autoscaling.HealthChecks.withAdditionalChecks({
        additionalTypes: [autoscaling.AdditionalHealthCheckType.ELB],
        gracePeriod: Duration.minutes(5),
      }),
      signals: autoscaling.Signals.waitForAll({ timeout: SIGNAL_TIMEOUT }),
      // One at a time, a new instance ready (signalled) before an old one goes; the group
      // deregisters the old one from the target group and waits the deregistration delay
      // (= SLUICE_SHUTDOWN_TIMEOUT) before terminating it, and systemd then stops Sluice with
      // SIGTERM within TimeoutStopSec.
      updatePolicy: autoscaling.UpdatePolicy.rollingUpdate({
        maxBatchSize: 1,
        minInstancesInService: this.minInstancesInService,
      }),
      groupMetrics: [autoscaling.GroupMetrics.all()],
    });
    // No instance may start before its role can read the files and the secret and signal.
    this.autoScalingGroup.node.addDependency(this.role);
    Annotations.of(this.autoScalingGroup).acknowledgeWarning(
      '@aws-cdk/aws-autoscaling:desiredCapacitySet',
      'The group has no scaling policies: the desired count is set on every deploy on purpose, ' +
        'like the Fargate service desired count.',
    );
    Validations.of(this.autoScalingGroup).acknowledge({
      id: 'AwsSolutions-AS3',
      reason:
        'No SNS topic: nobody would subscribe to it. Launch and termination events (and their ' +
        'failures) reach EventBridge and the activity history without configuration, and a ' +
        'host that never gets ready fails the deployment through its CloudFormation signal.',
    });

    this.environment = {
      ...sluiceEnvironment(props.settings),
      // ECS sets this in every Fargate container; on EC2 it is written out the same way.
      AWS_REGION: Aws.REGION,
    };
    for (const [name, value] of Object.entries(this.environment)) {
      checkEnvironmentValue(name, value);
    }
    const asgLogicalId = (
      this.autoScalingGroup.node.defaultChild as autoscaling.CfnAutoScalingGroup
    ).logicalId;
    this.userData.addCommands(
      ...setupScript({
        files: [
          [this.files.binary, HOST_PATHS.binary, '0755', sha256(props.binary)],
          [this.files.unit, HOST_PATHS.unit, '0644', sha256(SYSTEMD_UNIT)],
          [this.files.caBundle, HOST_PATHS.caBundle, '0444', sha256(props.rdsCaBundle)],
        ],
        environment: this.environment,
        stopTimeoutSeconds: stopTimeoutFor(props.settings.shutdownTimeout).toSeconds(),
        asgLogicalId,
      }),
    );
  }
}

/** The user data after `#!/bin/bash`: install, configure, start, wait for /readyz, signal. */
function setupScript(o: {
  files: [s3assets.Asset, string, string, string][];
  environment: Record<string, string>;
  stopTimeoutSeconds: number;
  asgLogicalId: string;
}): string[] {
  return [
    '# Sluice: install the binary, the unit and the CA bundle from the stack assets (S3 gateway',
    '# endpoint), write /etc/sluice, start the unit, and signal CloudFormation once GET /readyz',
    '# answers 200 (FAILURE, with the unit log on the console, if it does not). Sluice keeps',
    '# running either way: the load balancer decides whether it gets traffic.',
    'set -Eeuo pipefail',
    `readonly region='${Aws.REGION}' stack='${Aws.STACK_ID}' resource='${o.asgLogicalId}'`,
    'imds() {',
    '  local token',
    "  token=$(curl -fsS --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)",
    '  curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"',
    '}',
    'signal() {',
    '  aws cloudformation signal-resource --region "$region" --stack-name "$stack" \\',
    '    --logical-resource-id "$resource" --unique-id "$(imds instance-id)" --status "$1"',
    '}',
    'failed() {',
    '  trap - ERR',
    '  set +e',
    '  echo "sluice setup failed (line $1); the unit status and log follow" >&2',
    '  systemctl --no-pager status sluice.service >&2',
    '  journalctl --no-pager -u sluice.service -n 100 >&2',
    '  signal FAILURE',
    '  exit 1',
    '}',
    "trap 'failed $LINENO' ERR",
    'work=$(mktemp -d)',
    '# fetch S3_URL DESTINATION MODE SHA256',
    'fetch() {',
    '  aws s3 cp --region "$region" --only-show-errors "$1" "$work/file"',
    '  echo "$4  $work/file" | sha256sum --check --quiet',
    '  install -D -o root -g root -m "$3" "$work/file" "$2"',
    '}',
    ...o.files.map(
      ([asset, dest, mode, digest]) =>
        `fetch 's3://${asset.s3BucketName}/${asset.s3ObjectKey}' ${dest} ${mode} ${digest}`,
    ),
    'rm -rf "$work"',
    `${HOST_PATHS.binary} --version`,
    `install -d -m 0755 /etc/sluice ${path.posix.dirname(HOST_PATHS.dropIn)}`,
    `cat >${HOST_PATHS.config} <<'EOF'`,
    '# Sluice on EC2: every setting comes from SLUICE_* variables in sluice.env',
    '# (see proxy/sluice.example.toml for the keys and their defaults).',
    'EOF',
    `chmod 0644 ${HOST_PATHS.config}`,
    `(umask 077 && cat >${HOST_PATHS.environment}) <<'EOF'`,
    ...Object.entries(o.environment).map(([name, value]) => `${name}=${value}`),
    'EOF',
    '# Sluice gets SLUICE_SHUTDOWN_TIMEOUT after SIGTERM, systemd that plus the same margin as ECS.',
    `cat >${HOST_PATHS.dropIn} <<'EOF'`,
    '[Service]',
    `TimeoutStopSec=${o.stopTimeoutSeconds}s`,
    'EOF',
    'systemctl daemon-reload',
    'systemctl enable --now sluice.service',
    `deadline=$((SECONDS + ${READY_TIMEOUT.toSeconds()}))`,
    'while [ "$SECONDS" -lt "$deadline" ]; do',
    `  if curl -fs -o /dev/null --max-time 3 http://127.0.0.1:${HEALTH_PORT}/readyz; then`,
    '    # Only a deployment waits for the signal; an instance the group starts on its own',
    '    # (a replacement, a new maximum) is refused it, and serves anyway.',
    '    signal SUCCESS || echo "sluice: ready; CloudFormation is not waiting for a signal"',
    '    exit 0',
    '  fi',
    '  sleep 5',
    'done',
    `echo "sluice: GET /readyz did not answer 200 within ${READY_TIMEOUT.toSeconds()} s" >&2`,
    'failed $LINENO',
  ];
}

function positive(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) {
    throw new Error(`${name} must be a positive integer, got ${value}`);
  }
  return value;
}
