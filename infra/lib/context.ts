/**
 * Reads the app's settings from CDK context (`cdk synth -c taskCount=3`, or cdk.json), checking
 * each value so a typo fails synth with the key's name instead of deploying something else.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { Duration } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { Node } from 'constructs';

import { AUTH_MODES, SLUICE_HOSTINGS, type SluiceStackProps } from './sluice-stack';

/** The repository root: the Docker build context, and where cargo puts its output. */
export const REPO_ROOT = path.resolve(__dirname, '..', '..');
/** What `cargo lambda build --release --arm64 --output-format zip` produces for function/. */
export const DEFAULT_FUNCTION_ZIP = path.join(
  REPO_ROOT,
  'target',
  'lambda',
  'sluice-function',
  'bootstrap.zip',
);
/** Where `cargo zigbuild --release --target aarch64-unknown-linux-gnu.2.34 -p sluice` puts Sluice. */
export const DEFAULT_SLUICE_BINARY = path.join(
  REPO_ROOT,
  'target',
  'aarch64-unknown-linux-gnu',
  'release',
  'sluice',
);
/** Where infra/README.md downloads the RDS CA bundle to for EC2 hosts. */
export const DEFAULT_RDS_CA_BUNDLE = path.join(REPO_ROOT, 'target', 'rds-ca', 'global-bundle.pem');

/** Every context key the app reads, with what it means (see infra/README.md). */
export const CONTEXT_KEYS = {
  stackName: 'name of the main stack (default Sluice)',
  azCount: 'availability zones (default 2)',
  availabilityZones: 'comma-separated zones, overrides azCount',
  taskCount: 'Sluice tasks (default 2)',
  taskCpu: 'Fargate CPU units per task (default 512)',
  taskMemory: 'Fargate memory per task in MiB (default 1024)',
  backendMaxConnections: 'backend connections per Sluice task (default 20)',
  shutdownTimeoutSeconds: "Sluice's SIGTERM deadline (default 30)",
  dbInstanceType: 'RDS instance type without "db." (default t4g.micro)',
  dbStorageGiB: 'allocated storage (default 20)',
  dbName: 'a database to create and pass to the Lambda as DB_NAME',
  multiAz: 'true for a standby in a second zone (default false)',
  deletionProtection: 'false to allow deleting the database (default true)',
  functionZip: 'the Lambda package (default target/lambda/sluice-function/bootstrap.zip)',
  sidecarExample: 'true to add the SluiceSidecar example stack',
  sidecarAppRepository: "the example application's ECR repository (required with sidecarExample)",
  sidecarAppTag: "the example application's image tag (default latest)",
  sluiceHosting: 'where Sluice runs: fargate (default) or ec2 (an EC2 Auto Scaling group)',
  instanceType: 'ec2: the arm64 (Graviton) instance type (default t4g.small)',
  instanceCount: 'ec2: desired instances (default 2)',
  minInstances: 'ec2: Auto Scaling minimum (default instanceCount)',
  maxInstances: 'ec2: Auto Scaling maximum (default instanceCount + 1)',
  sluiceBinary:
    'ec2: the aarch64 sluice binary (default target/aarch64-unknown-linux-gnu/release/sluice)',
  rdsCaBundle: 'ec2: the RDS CA bundle (default target/rds-ca/global-bundle.pem)',
  clientAuth: 'how the Lambda logs in to Sluice: secret (default) or iam',
  backendAuth: 'how Sluice logs in to the database: secret (default) or iam (needs clientAuth=iam)',
  iamDatabaseUser:
    'the database user of IAM logins (default: master user; app with backendAuth=iam)',
  iamAudience: 'the audience IAM tokens are bound to (default sluice-<stack name>)',
  clientTlsSecretArn:
    'clientAuth=iam: the secret holding Sluice client TLS certificate and privateKey (PEM)',
  clientTlsCaFile: 'clientAuth=iam: the CA certificate file (PEM) the Lambda trusts',
} as const;

export type ContextKey = keyof typeof CONTEXT_KEYS;

export class ContextReader {
  constructor(private readonly node: Node) {}

  string(key: ContextKey): string | undefined {
    const value: unknown = this.node.tryGetContext(key);
    if (value === undefined || value === null || value === '') return undefined;
    if (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean') {
      throw new Error(`context ${key}: expected a string, got ${JSON.stringify(value)}`);
    }
    return String(value);
  }

  integer(key: ContextKey): number | undefined {
    const raw = this.string(key);
    if (raw === undefined) return undefined;
    if (!/^[0-9]+$/.test(raw.trim()) || Number(raw) < 1) {
      throw new Error(`context ${key}: expected a positive integer, got ${JSON.stringify(raw)}`);
    }
    return Number(raw);
  }

  boolean(key: ContextKey): boolean | undefined {
    const raw = this.string(key);
    if (raw === undefined) return undefined;
    if (raw === 'true') return true;
    if (raw === 'false') return false;
    throw new Error(`context ${key}: expected true or false, got ${JSON.stringify(raw)}`);
  }

  /** One of `choices`, or undefined when unset. */
  oneOf<T extends string>(key: ContextKey, choices: readonly T[]): T | undefined {
    const raw = this.string(key);
    if (raw === undefined) return undefined;
    const found = choices.find((c) => c === raw);
    if (found === undefined) {
      throw new Error(
        `context ${key}: expected ${choices.join(' or ')}, got ${JSON.stringify(raw)}`,
      );
    }
    return found;
  }

  list(key: ContextKey): string[] | undefined {
    const raw = this.string(key);
    if (raw === undefined) return undefined;
    const items = raw
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s !== '');
    return items.length > 0 ? items : undefined;
  }
}

/** The stack's sizing and behaviour from context (everything but the image and the code). */
export function stackSettingsFromContext(
  node: Node,
): Omit<SluiceStackProps, 'sluiceImage' | 'functionCode'> {
  const ctx = new ContextReader(node);
  const shutdown = ctx.integer('shutdownTimeoutSeconds');
  const instanceType = ctx.string('dbInstanceType');
  const hostType = ctx.string('instanceType');
  const caFile = ctx.string('clientTlsCaFile');
  return {
    clientAuth: ctx.oneOf('clientAuth', AUTH_MODES),
    backendAuth: ctx.oneOf('backendAuth', AUTH_MODES),
    iamDatabaseUser: ctx.string('iamDatabaseUser'),
    iamAudience: ctx.string('iamAudience'),
    clientTlsSecretArn: ctx.string('clientTlsSecretArn'),
    clientTlsCaPem: caFile === undefined ? undefined : readCaFile(caFile),
    hosting: ctx.oneOf('sluiceHosting', SLUICE_HOSTINGS),
    azCount: ctx.integer('azCount'),
    availabilityZones: ctx.list('availabilityZones'),
    taskCount: ctx.integer('taskCount'),
    taskCpu: ctx.integer('taskCpu'),
    taskMemoryMiB: ctx.integer('taskMemory'),
    backendMaxConnections: ctx.integer('backendMaxConnections'),
    shutdownTimeout: shutdown === undefined ? undefined : Duration.seconds(shutdown),
    databaseInstanceType:
      instanceType === undefined
        ? undefined
        : new ec2.InstanceType(instanceType.replace(/^db\./, '')),
    databaseStorageGiB: ctx.integer('dbStorageGiB'),
    databaseName: ctx.string('dbName'),
    multiAz: ctx.boolean('multiAz'),
    deletionProtection: ctx.boolean('deletionProtection'),
    instanceType: hostType === undefined ? undefined : new ec2.InstanceType(hostType),
    instanceCount: ctx.integer('instanceCount'),
    minInstances: ctx.integer('minInstances'),
    maxInstances: ctx.integer('maxInstances'),
  };
}

/** The PEM text of `file` (context clientTlsCaFile), with a clear error when it is unusable. */
function readCaFile(file: string): string {
  const location = path.resolve(file);
  if (!fs.existsSync(location)) {
    throw new Error(`context clientTlsCaFile: ${location} does not exist`);
  }
  const pem = fs.readFileSync(location, 'utf8');
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
    throw new Error(`context clientTlsCaFile: ${location} holds no PEM certificate`);
  }
  return pem;
}

/**
 * The files an EC2 host installs (sluiceHosting=ec2): the aarch64 binary and the RDS CA bundle,
 * from context or their default places under target/. The stack checks them (see
 * lib/sluice-hosts.ts) and says how to make them when they are missing.
 */
export function sluiceHostFilesFromContext(node: Node): {
  sluiceBinary: string;
  rdsCaBundle: string;
} {
  const ctx = new ContextReader(node);
  const binary = ctx.string('sluiceBinary');
  const bundle = ctx.string('rdsCaBundle');
  return {
    sluiceBinary: binary ? path.resolve(binary) : DEFAULT_SLUICE_BINARY,
    rdsCaBundle: bundle ? path.resolve(bundle) : DEFAULT_RDS_CA_BUNDLE,
  };
}

/**
 * The Lambda package: the zip cargo lambda builds (or a directory holding `bootstrap`). Fails
 * with the command to run when it is missing, rather than deploying a stack without code.
 */
export function functionCodeFromContext(node: Node): lambda.Code {
  const configured = new ContextReader(node).string('functionZip');
  const location = configured ? path.resolve(configured) : DEFAULT_FUNCTION_ZIP;
  if (!fs.existsSync(location)) {
    throw new Error(
      `The Lambda package ${location} does not exist. Build it from the repository root with\n` +
        '    cargo lambda build --release --arm64 --output-format zip -p sluice-function\n' +
        '(cargo-lambda and ziglang install from PyPI: pip install cargo-lambda ziglang), ' +
        'or point -c functionZip=PATH at a zip or a directory containing bootstrap.',
    );
  }
  if (fs.statSync(location).isDirectory() && !fs.existsSync(path.join(location, 'bootstrap'))) {
    throw new Error(`functionZip ${location} is a directory without a bootstrap executable`);
  }
  return lambda.Code.fromAsset(location);
}
