/**
 * What every Sluice container has in common, whether it runs as its own ECS service behind the
 * load balancer or as a sidecar in an application's task: the environment that configures it
 * (see proxy/sluice.example.toml for the keys), the ports, and the hardening.
 */
import { Duration, Token, Validations } from 'aws-cdk-lib';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';

/** The MySQL port Sluice listens on (and the port RDS listens on). */
export const MYSQL_PORT = 3306;
/** Sluice's HTTP port: GET /healthz (alive), GET /readyz (credentials loaded, backend reachable). */
export const HEALTH_PORT = 9090;
/** Where the image keeps the RDS global CA bundle (see the Dockerfile). */
export const RDS_CA_FILE = '/etc/sluice/rds-ca.pem';
/** The unprivileged user the image runs as (distroless "nonroot"). */
export const SLUICE_UID = 65532;
/** Extra time ECS gives the container after SIGTERM beyond Sluice's own shutdown deadline. */
export const STOP_MARGIN = Duration.seconds(5);
/** Fargate refuses stop timeouts above two minutes. */
const MAX_STOP_TIMEOUT = Duration.seconds(120);

export interface SluiceSettings {
  /** IP address Sluice listens on for MySQL clients (port 3306). */
  readonly listenHost: string;
  /** IP address of the HTTP health and metrics port (9090). */
  readonly healthHost: string;
  /** host:port of the database. */
  readonly backendAddress: string;
  /** Cap on backend connections opened by this one Sluice process. */
  readonly backendMaxConnections: number;
  /**
   * Secrets Manager secrets (RDS format) holding the database users' credentials (none when
   * every backend login uses an RDS IAM token).
   */
  readonly secretArns: string[];
  /** How long Sluice lets open transactions finish after SIGTERM. */
  readonly shutdownTimeout: Duration;
  /** Clients that log in with AWS IAM instead of a password (needs `clientTlsSecret`). */
  readonly iam?: SluiceIamSettings;
  /** Database users Sluice logs in as with RDS IAM authentication tokens. */
  readonly rdsIamUsers?: string[];
  /** The database's region, for RDS IAM tokens (default: the task's AWS_REGION). */
  readonly rdsIamRegion?: string;
  /**
   * Sluice's client TLS certificate chain and private key (PEM): a secret whose JSON has the
   * keys `certificate` and `privateKey`, given to the container through its environment.
   */
  readonly clientTlsSecret?: secretsmanager.ISecret;
}

/** IAM logins: which AWS identities may log in as which database users. */
export interface SluiceIamSettings {
  /** The name this Sluice's tokens are bound to (`iam.audience`). */
  readonly audience: string;
  /** ARN patterns and the database user each logs in as. */
  readonly identities: readonly { readonly arn: string; readonly databaseUser: string }[];
  /** STS's region (default: the task's AWS_REGION). */
  readonly stsRegion?: string;
}

/** Checks settings that would only fail at deploy or run time. */
export function validateSettings(s: SluiceSettings): void {
  if (!Token.isUnresolved(s.backendMaxConnections)) {
    if (!Number.isInteger(s.backendMaxConnections) || s.backendMaxConnections < 1) {
      throw new Error(
        `backendMaxConnections must be a positive integer, got ${s.backendMaxConnections}`,
      );
    }
  }
  if (s.secretArns.length === 0 && (s.rdsIamUsers ?? []).length === 0) {
    throw new Error(
      'Sluice needs at least one Secrets Manager secret, or RDS IAM users (rdsIamUsers)',
    );
  }
  if (s.iam !== undefined) {
    if (s.iam.identities.length === 0) {
      throw new Error('IAM logins need at least one identity (an ARN and its database user)');
    }
    if (s.clientTlsSecret === undefined) {
      throw new Error(
        'IAM logins need client TLS (the token travels as a clear-text password): give ' +
          'clientTlsSecret, a secret with the keys certificate and privateKey',
      );
    }
  }
  const stop = s.shutdownTimeout.toSeconds() + STOP_MARGIN.toSeconds();
  if (s.shutdownTimeout.toSeconds() < 1 || stop > MAX_STOP_TIMEOUT.toSeconds()) {
    throw new Error(
      `shutdownTimeout must be between 1 and ${MAX_STOP_TIMEOUT.toSeconds() - STOP_MARGIN.toSeconds()} seconds ` +
        `(ECS allows at most ${MAX_STOP_TIMEOUT.toSeconds()} s between SIGTERM and SIGKILL), ` +
        `got ${s.shutdownTimeout.toSeconds()} s`,
    );
  }
}

/** The SLUICE_* environment that configures one Sluice container. */
export function sluiceEnvironment(s: SluiceSettings): Record<string, string> {
  validateSettings(s);
  return {
    SLUICE_LISTEN: `${s.listenHost}:${MYSQL_PORT}`,
    SLUICE_HTTP_LISTEN: `${s.healthHost}:${HEALTH_PORT}`,
    SLUICE_BACKEND_ADDRESS: s.backendAddress,
    SLUICE_BACKEND_MAX_CONNECTIONS: String(s.backendMaxConnections),
    ...(s.secretArns.length > 0
      ? { SLUICE_SECRETS_MANAGER_SECRET_IDS: s.secretArns.join(',') }
      : {}),
    SLUICE_BACKEND_TLS: 'verify-identity',
    SLUICE_BACKEND_TLS_CA_FILE: RDS_CA_FILE,
    SLUICE_SHUTDOWN_TIMEOUT: `${s.shutdownTimeout.toSeconds()}s`,
    SLUICE_LOG_FORMAT: 'json',
    ...(s.clientTlsSecret !== undefined ? { SLUICE_TLS_MODE: 'required' } : {}),
    ...(s.iam !== undefined
      ? {
          SLUICE_IAM_AUDIENCE: s.iam.audience,
          SLUICE_IAM_IDENTITIES: s.iam.identities
            .map((i) => `${i.arn}=${i.databaseUser}`)
            .join(','),
          ...(s.iam.stsRegion !== undefined ? { SLUICE_IAM_STS_REGION: s.iam.stsRegion } : {}),
        }
      : {}),
    ...((s.rdsIamUsers ?? []).length > 0
      ? {
          SLUICE_RDS_IAM_USERS: (s.rdsIamUsers ?? []).join(','),
          ...(s.rdsIamRegion !== undefined ? { SLUICE_RDS_IAM_REGION: s.rdsIamRegion } : {}),
        }
      : {}),
  };
}

/**
 * What the container gets from Secrets Manager through its environment (ECS reads it with the
 * execution role at start): the client TLS certificate and key, when configured.
 */
export function sluiceSecrets(s: SluiceSettings): Record<string, ecs.Secret> {
  if (s.clientTlsSecret === undefined) return {};
  return {
    SLUICE_TLS_CERT_PEM: ecs.Secret.fromSecretsManager(s.clientTlsSecret, 'certificate'),
    SLUICE_TLS_KEY_PEM: ecs.Secret.fromSecretsManager(s.clientTlsSecret, 'privateKey'),
  };
}

/** SIGTERM to SIGKILL: Sluice's own deadline plus a margin to close sockets and flush logs. */
export function stopTimeoutFor(shutdownTimeout: Duration): Duration {
  return Duration.seconds(shutdownTimeout.toSeconds() + STOP_MARGIN.toSeconds());
}

/**
 * Adds the Sluice container to a task definition: non-root, read-only root filesystem, every
 * Linux capability dropped, a high open-file limit (one descriptor per client and per backend
 * connection), and the stop timeout derived from Sluice's shutdown deadline.
 */
export function addSluiceContainer(
  scope: Construct,
  taskDefinition: ecs.TaskDefinition,
  options: {
    readonly image: ecs.ContainerImage;
    readonly settings: SluiceSettings;
    readonly logging: ecs.LogDriver;
    readonly containerName?: string;
    /** Publish the ports in the task's network namespace (needed behind a load balancer). */
    readonly portMappings: boolean;
    readonly cpu?: number;
    readonly memoryReservationMiB?: number;
  },
): ecs.ContainerDefinition {
  const linuxParameters = new ecs.LinuxParameters(scope, 'SluiceLinuxParameters', {
    initProcessEnabled: false,
  });
  linuxParameters.dropCapabilities(ecs.Capability.ALL);
  const container = taskDefinition.addContainer(options.containerName ?? 'sluice', {
    image: options.image,
    essential: true,
    environment: sluiceEnvironment(options.settings),
    secrets: sluiceSecrets(options.settings),
    user: `${SLUICE_UID}:${SLUICE_UID}`,
    readonlyRootFilesystem: true,
    privileged: false,
    linuxParameters,
    stopTimeout: stopTimeoutFor(options.settings.shutdownTimeout),
    ulimits: [{ name: ecs.UlimitName.NOFILE, softLimit: 65536, hardLimit: 65536 }],
    logging: options.logging,
    cpu: options.cpu,
    memoryReservationMiB: options.memoryReservationMiB,
    portMappings: options.portMappings
      ? [
          { name: 'mysql', containerPort: MYSQL_PORT, protocol: ecs.Protocol.TCP },
          { name: 'health', containerPort: HEALTH_PORT, protocol: ecs.Protocol.TCP },
        ]
      : [],
  });
  // An image in ECR (the asset the app builds) makes ECS give the execution role
  // ecr:GetAuthorizationToken, an action with no resource-level permissions: its Resource is
  // necessarily "*". The pull itself is granted on the one repository. (The tests check that
  // this is the only statement with a wildcard resource.)
  if (taskDefinition.executionRole) {
    Validations.of(taskDefinition.executionRole).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason:
        'ecr:GetAuthorizationToken supports no resource-level permissions, so it is granted on ' +
        '"*"; image pulls are limited to the one ECR repository.',
    });
  }
  return container;
}
