/**
 * The seed's deployment with Sluice in place of RDS Proxy: an isolated VPC, RDS MySQL with a
 * generated secret under a customer-managed key, Sluice on ECS Fargate (arm64) or, with
 * `hosting: 'ec2'`, on an EC2 Auto Scaling group (arm64, lib/sluice-hosts.ts), behind an
 * internal Network Load Balancer, and the Rust Lambda that talks to the database through it.
 *
 * Traffic on 3306 follows one chain of security groups and nothing else may come in:
 *
 *   Lambda SG --3306--> NLB SG --3306 (+9090 health checks)--> Sluice SG --3306--> RDS SG
 *
 * The interface endpoints accept HTTPS from the two security groups whose workloads call AWS
 * (Sluice and the Lambda), not from the whole VPC.
 */
import {
  CfnOutput,
  Duration,
  Lazy,
  RemovalPolicy,
  ArnFormat,
  Stack,
  StackProps,
  Token,
  Validations,
} from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as rds from 'aws-cdk-lib/aws-rds';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';

import { grantSecretRead } from './grants';
import { addSluiceContainer, HEALTH_PORT, MYSQL_PORT, SluiceSettings } from './sluice-container';
import { SluiceHosts } from './sluice-hosts';

/** The database's master user name, as in the seed (the password is generated). */
export const DATABASE_USERNAME = 'admin';
/** The VPC's address range. */
export const VPC_CIDR = '10.0.0.0/16';
/** The MySQL engine: a concrete version, so synth never picks one silently. */
export const DEFAULT_ENGINE_VERSION = rds.MysqlEngineVersion.VER_8_4_8;

/**
 * How a side logs in: with the database secret's password, or with AWS IAM (the Lambda: a
 * Sluice IAM token its role signs; Sluice: RDS IAM authentication tokens).
 */
export type AuthMode = 'secret' | 'iam';
export const AUTH_MODES: readonly AuthMode[] = ['secret', 'iam'];

/** The database user IAM logins use by default when Sluice logs in to RDS with IAM too. */
export const DEFAULT_IAM_DATABASE_USER = 'app';

/** Where Sluice runs: ECS Fargate tasks, or EC2 instances in an Auto Scaling group. */
export type SluiceHosting = 'fargate' | 'ec2';
export const SLUICE_HOSTINGS: readonly SluiceHosting[] = ['fargate', 'ec2'];

export interface SluiceStackProps extends StackProps {
  /** Where Sluice runs (default 'fargate'). */
  readonly hosting?: SluiceHosting;
  /** fargate: the Sluice image (the real app builds it from the repository's Dockerfile). */
  readonly sluiceImage?: ecs.ContainerImage;
  /** The Lambda's code (the real app uses cargo lambda's bootstrap.zip). */
  readonly functionCode: lambda.Code;
  /** Number of availability zones (default 2; more needs a concrete region or `availabilityZones`). */
  readonly azCount?: number;
  /** Explicit availability zones (overrides `azCount`). */
  readonly availabilityZones?: string[];
  /** Sluice tasks; ECS spreads them across the zones (default 2). */
  readonly taskCount?: number;
  /** Fargate CPU units per Sluice task (default 512). */
  readonly taskCpu?: number;
  /** Fargate memory per Sluice task in MiB (default 1024). */
  readonly taskMemoryMiB?: number;
  /**
   * Backend connections each Sluice task may open (default 20). The database sees at most
   * taskCount x this many connections from Sluice: keep it under its max_connections.
   */
  readonly backendMaxConnections?: number;
  /** How long Sluice lets transactions finish after SIGTERM (default 30 s, at most 115 s). */
  readonly shutdownTimeout?: Duration;
  /** Database instance type (default db.t4g.micro). */
  readonly databaseInstanceType?: ec2.InstanceType;
  /** MySQL version (default 8.4.8). */
  readonly databaseEngineVersion?: rds.MysqlEngineVersion;
  /** Allocated storage in GiB (default 20; autoscaling up to 5x). */
  readonly databaseStorageGiB?: number;
  /** A standby in a second zone (default false). */
  readonly multiAz?: boolean;
  /** Refuse to delete the database (default true). */
  readonly deletionProtection?: boolean;
  /** A database to create and to pass to the Lambda as DB_NAME (default none). */
  readonly databaseName?: string;
  /** Lambda memory in MiB (default 256). */
  readonly functionMemoryMiB?: number;
  /** Lambda timeout (default 10 s). */
  readonly functionTimeout?: Duration;
  /** Retention of the log groups this stack creates (default one month). */
  readonly logRetention?: logs.RetentionDays;
  /** ec2: an aarch64 Linux build of `sluice` to install on the instances (see infra/README.md). */
  readonly sluiceBinary?: string;
  /** ec2: the RDS CA bundle (PEM) to install as /etc/sluice/rds-ca.pem. */
  readonly rdsCaBundle?: string;
  /** ec2: an arm64 (Graviton) instance type (default t4g.small). */
  readonly instanceType?: ec2.InstanceType;
  /** ec2: instances to run; the Auto Scaling group spreads them across the zones (default 2). */
  readonly instanceCount?: number;
  /** ec2: Auto Scaling minimum (default instanceCount). */
  readonly minInstances?: number;
  /** ec2: Auto Scaling maximum (default instanceCount + 1, room for rolling updates). */
  readonly maxInstances?: number;
  /**
   * How the Lambda logs in to Sluice (default 'secret'). 'iam': no secret; its role's
   * credentials sign a token Sluice checks with STS (through an STS interface endpoint),
   * over TLS; needs databaseName, clientTlsSecretArn and clientTlsCaPem. Fargate only.
   */
  readonly clientAuth?: AuthMode;
  /**
   * How Sluice logs in to the database (default 'secret'). 'iam': RDS IAM authentication
   * tokens from its task role, which may rds-db:connect as iamDatabaseUser only; Sluice reads
   * no secret. Needs clientAuth 'iam'. Fargate only.
   */
  readonly backendAuth?: AuthMode;
  /**
   * The database user the Lambda works as with clientAuth 'iam' (default: the master user
   * with backendAuth 'secret', whose password Sluice reads from the secret; 'app' with
   * backendAuth 'iam', created IDENTIFIED WITH AWSAuthenticationPlugin).
   */
  readonly iamDatabaseUser?: string;
  /** The audience Sluice's IAM tokens are bound to (default `sluice-<stack name>`). */
  readonly iamAudience?: string;
  /**
   * clientAuth 'iam': a Secrets Manager secret (complete ARN) whose JSON holds Sluice's client
   * TLS certificate chain (`certificate`) and private key (`privateKey`), in PEM.
   */
  readonly clientTlsSecretArn?: string;
  /** clientAuth 'iam': the CA certificate (PEM) that signed it, which the Lambda trusts. */
  readonly clientTlsCaPem?: string;
}

/** Props that only mean something for one kind of hosting (an unused image is harmless). */
const FARGATE_ONLY = ['taskCount', 'taskCpu', 'taskMemoryMiB'] as const;
const EC2_ONLY = [
  'sluiceBinary',
  'rdsCaBundle',
  'instanceType',
  'instanceCount',
  'minInstances',
  'maxInstances',
] as const;

export class SluiceStack extends Stack {
  readonly hosting: SluiceHosting;
  readonly vpc: ec2.Vpc;
  readonly key: kms.Key;
  /** The generated database secret as created (before RDS attaches host and port to it). */
  readonly generatedSecret: secretsmanager.Secret;
  /** The database secret once attached to the instance: what consumers are given. */
  readonly secret: secretsmanager.ISecret;
  readonly database: rds.DatabaseInstance;
  readonly loadBalancer: elbv2.NetworkLoadBalancer;
  readonly targetGroup: elbv2.NetworkTargetGroup;
  readonly function: lambda.Function;
  readonly lambdaSecurityGroup: ec2.SecurityGroup;
  readonly loadBalancerSecurityGroup: ec2.SecurityGroup;
  readonly sluiceSecurityGroup: ec2.SecurityGroup;
  readonly databaseSecurityGroup: ec2.SecurityGroup;
  readonly endpointSecurityGroup: ec2.SecurityGroup;
  private readonly fargate?: { cluster: ecs.Cluster; service: ecs.FargateService };
  private readonly ec2Hosts?: SluiceHosts;

  /** fargate: the ECS cluster. */
  get cluster(): ecs.Cluster {
    return this.requireFargate().cluster;
  }

  /** fargate: the Sluice service. */
  get service(): ecs.FargateService {
    return this.requireFargate().service;
  }

  /** ec2: the Auto Scaling group, its launch template, role and files. */
  get hosts(): SluiceHosts {
    if (!this.ec2Hosts) {
      throw new Error(`${this.stackName} runs Sluice on ${this.hosting}: there are no EC2 hosts`);
    }
    return this.ec2Hosts;
  }

  private requireFargate(): { cluster: ecs.Cluster; service: ecs.FargateService } {
    if (!this.fargate) {
      throw new Error(`${this.stackName} runs Sluice on ${this.hosting}: there is no ECS service`);
    }
    return this.fargate;
  }

  constructor(scope: Construct, id: string, props: SluiceStackProps) {
    super(scope, id, props);
    this.hosting = props.hosting ?? 'fargate';
    if (!SLUICE_HOSTINGS.includes(this.hosting)) {
      throw new Error(`hosting must be ${SLUICE_HOSTINGS.join(' or ')}, got ${this.hosting}`);
    }
    const misplaced = (this.hosting === 'fargate' ? EC2_ONLY : FARGATE_ONLY).filter(
      (key) => props[key] !== undefined,
    );
    if (misplaced.length > 0) {
      throw new Error(
        `${misplaced.join(', ')}: only for ${this.hosting === 'fargate' ? 'ec2' : 'fargate'} ` +
          `hosting, and this stack runs Sluice on ${this.hosting}`,
      );
    }
    const clientAuth = props.clientAuth ?? 'secret';
    const backendAuth = props.backendAuth ?? 'secret';
    for (const [name, mode] of [
      ['clientAuth', clientAuth],
      ['backendAuth', backendAuth],
    ] as const) {
      if (!AUTH_MODES.includes(mode)) {
        throw new Error(`${name} must be ${AUTH_MODES.join(' or ')}, got ${mode}`);
      }
    }
    if (backendAuth === 'iam' && clientAuth !== 'iam') {
      throw new Error(
        "backendAuth 'iam' needs clientAuth 'iam': with the secret the Lambda would log in " +
          'as the master user, which RDS cannot authenticate with IAM',
      );
    }
    if (clientAuth === 'iam') {
      if (this.hosting !== 'fargate') {
        throw new Error("clientAuth 'iam' is available with Fargate hosting only");
      }
      const missing = (['databaseName', 'clientTlsSecretArn', 'clientTlsCaPem'] as const).filter(
        (key) => props[key] === undefined || props[key] === '',
      );
      if (missing.length > 0) {
        throw new Error(
          `clientAuth 'iam' needs ${missing.join(', ')}: the Lambda reads no secret (so no ` +
            'database name from it), and its token goes over TLS to a certificate it checks',
        );
      }
      if (!(props.clientTlsCaPem ?? '').includes('-----BEGIN CERTIFICATE-----')) {
        throw new Error('clientTlsCaPem holds no PEM certificate');
      }
    }
    const iamUser =
      props.iamDatabaseUser ??
      (backendAuth === 'iam' ? DEFAULT_IAM_DATABASE_USER : DATABASE_USERNAME);
    if (!/^[A-Za-z0-9_]{1,32}$/.test(iamUser)) {
      throw new Error(`iamDatabaseUser must be 1 to 32 letters, digits or _, got ${iamUser}`);
    }
    const audience = props.iamAudience ?? `sluice-${id}`;
    const taskCount = positiveInteger('taskCount', props.taskCount ?? 2);
    const shutdownTimeout = props.shutdownTimeout ?? Duration.seconds(30);
    const logRetention = props.logRetention ?? logs.RetentionDays.ONE_MONTH;
    const deletionProtection = props.deletionProtection ?? true;
    const multiAz = props.multiAz ?? false;
    const storageGiB = positiveInteger('databaseStorageGiB', props.databaseStorageGiB ?? 20);

    // ---- Network: isolated subnets only, and the endpoints they need -----------------------
    const azCount = positiveInteger('azCount', props.azCount ?? 2);
    if (props.availabilityZones === undefined && azCount > 2 && Token.isUnresolved(this.region)) {
      throw new Error(
        `azCount=${azCount} needs a stack with a concrete region (set CDK_DEFAULT_REGION or ` +
          'the "region" context) or an explicit availabilityZones list: an environment-agnostic ' +
          'stack can only spread over 2 zones',
      );
    }
    this.vpc = new ec2.Vpc(this, 'Vpc', {
      ipAddresses: ec2.IpAddresses.cidr(VPC_CIDR),
      ...(props.availabilityZones
        ? { availabilityZones: props.availabilityZones }
        : { maxAzs: azCount }),
      natGateways: 0,
      subnetConfiguration: [
        { name: 'isolated', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: 24 },
      ],
      restrictDefaultSecurityGroup: true,
      flowLogs: {
        all: {
          destination: ec2.FlowLogDestination.toCloudWatchLogs(
            new logs.LogGroup(this, 'FlowLogs', { retention: logRetention }),
          ),
          trafficType: ec2.FlowLogTrafficType.ALL,
        },
      },
    });
    const isolated: ec2.SubnetSelection = { subnetType: ec2.SubnetType.PRIVATE_ISOLATED };
    if (this.vpc.isolatedSubnets.length < 2) {
      throw new Error('RDS and the load balancer need subnets in at least 2 availability zones');
    }

    this.endpointSecurityGroup = new ec2.SecurityGroup(this, 'EndpointSecurityGroup', {
      vpc: this.vpc,
      description: 'VPC interface endpoints: HTTPS from Sluice and the Lambda only',
      allowAllOutbound: false,
    });
    const interfaceEndpoints: Record<string, ec2.InterfaceVpcEndpointAwsService> = {
      SecretsManager: ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
      Kms: ec2.InterfaceVpcEndpointAwsService.KMS,
      EcrApi: ec2.InterfaceVpcEndpointAwsService.ECR,
      EcrDocker: ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
      Logs: ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
      // EC2 hosts tell CloudFormation when Sluice is ready (creation and rolling updates wait
      // for it). The ECR and Logs endpoints stay in both variants: the sidecar example stack
      // runs Fargate tasks in this VPC whichever way the main stack hosts Sluice.
      ...(this.hosting === 'ec2'
        ? { CloudFormation: ec2.InterfaceVpcEndpointAwsService.CLOUDFORMATION }
        : {}),
      // IAM logins: Sluice sends each new token to STS here (private DNS keeps the regional
      // name the tokens are signed for).
      ...(clientAuth === 'iam' ? { Sts: ec2.InterfaceVpcEndpointAwsService.STS } : {}),
    };
    for (const [name, service] of Object.entries(interfaceEndpoints)) {
      this.vpc.addInterfaceEndpoint(`${name}Endpoint`, {
        service,
        subnets: isolated,
        privateDnsEnabled: true,
        open: false,
        securityGroups: [this.endpointSecurityGroup],
      });
    }
    // ECR keeps image layers in S3: Fargate fetches them through this gateway, and EC2 hosts
    // download Sluice's files from the CDK asset bucket through it.
    this.vpc.addGatewayEndpoint('S3Endpoint', {
      service: ec2.GatewayVpcEndpointAwsService.S3,
      subnets: [isolated],
    });

    // ---- Security groups: the chain ------------------------------------------------------------
    const securityGroup = (id: string, description: string) =>
      new ec2.SecurityGroup(this, id, { vpc: this.vpc, description, allowAllOutbound: false });
    this.lambdaSecurityGroup = securityGroup('FunctionSecurityGroup', 'Sluice demo Lambda');
    this.loadBalancerSecurityGroup = securityGroup(
      'LoadBalancerSecurityGroup',
      'Sluice internal NLB: MySQL from the Lambda',
    );
    this.sluiceSecurityGroup = securityGroup(
      'SluiceSecurityGroup',
      this.hosting === 'ec2'
        ? 'Sluice instances: MySQL and health checks from the NLB'
        : 'Sluice tasks: MySQL and health checks from the NLB',
    );
    this.databaseSecurityGroup = securityGroup('DatabaseSecurityGroup', 'RDS: MySQL from Sluice');

    const mysql = ec2.Port.tcp(MYSQL_PORT);
    this.lambdaSecurityGroup.connections.allowTo(
      this.loadBalancerSecurityGroup,
      mysql,
      'Lambda to Sluice NLB',
    );
    this.loadBalancerSecurityGroup.connections.allowTo(
      this.sluiceSecurityGroup,
      mysql,
      'NLB to Sluice',
    );
    this.loadBalancerSecurityGroup.connections.allowTo(
      this.sluiceSecurityGroup,
      ec2.Port.tcp(HEALTH_PORT),
      'NLB health checks to Sluice /readyz',
    );
    this.sluiceSecurityGroup.connections.allowTo(
      this.databaseSecurityGroup,
      mysql,
      'Sluice to RDS',
    );
    const https = ec2.Port.tcp(443);
    this.lambdaSecurityGroup.connections.allowTo(
      this.endpointSecurityGroup,
      https,
      'Lambda to VPC endpoints',
    );
    this.endpointSecurityGroup.addIngressRule(
      this.sluiceSecurityGroup,
      https,
      'Sluice to VPC endpoints',
    );
    // Image layers (Fargate) and Sluice's files (EC2) come from S3 through the gateway
    // endpoint, whose prefix list cannot be
    // looked up offline; the isolated subnets have no route to anywhere else.
    this.sluiceSecurityGroup.addEgressRule(
      ec2.Peer.anyIpv4(),
      https,
      'HTTPS to the VPC endpoints and the S3 gateway (no internet route exists)',
    );

    // ---- Key and secret ---------------------------------------------------------------------------
    this.key = new kms.Key(this, 'Key', {
      description: 'Sluice: encrypts the database secret and the database storage',
      enableKeyRotation: true,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    this.generatedSecret = new secretsmanager.Secret(this, 'DatabaseSecret', {
      description: 'RDS master credentials, read by Sluice and the Lambda',
      encryptionKey: this.key,
      generateSecretString: {
        secretStringTemplate: JSON.stringify({ username: DATABASE_USERNAME }),
        generateStringKey: 'password',
        excludePunctuation: true,
        passwordLength: 32,
      },
    });
    Validations.of(this.generatedSecret).acknowledge({
      id: 'AwsSolutions-SMG4',
      reason:
        'Rotation is not scheduled by this stack: the hosted rotation Lambda would need its own ' +
        'path to the database outside the Lambda -> NLB -> Sluice -> RDS chain. Sluice re-reads ' +
        'the secret periodically and when the database rejects a password, so rotation can be ' +
        'added without restarting it.',
    });

    // ---- Database -------------------------------------------------------------------------------------
    const engine = rds.DatabaseInstanceEngine.mysql({
      version: props.databaseEngineVersion ?? DEFAULT_ENGINE_VERSION,
    });
    this.database = new rds.DatabaseInstance(this, 'Database', {
      engine,
      instanceType:
        props.databaseInstanceType ??
        ec2.InstanceType.of(ec2.InstanceClass.BURSTABLE4_GRAVITON, ec2.InstanceSize.MICRO),
      vpc: this.vpc,
      vpcSubnets: isolated,
      securityGroups: [this.databaseSecurityGroup],
      credentials: rds.Credentials.fromSecret(this.generatedSecret),
      databaseName: props.databaseName,
      port: MYSQL_PORT,
      multiAz,
      publiclyAccessible: false,
      storageEncrypted: true,
      storageEncryptionKey: this.key,
      storageType: rds.StorageType.GP3,
      allocatedStorage: storageGiB,
      maxAllocatedStorage: storageGiB * 5,
      backupRetention: Duration.days(7),
      deletionProtection,
      removalPolicy: deletionProtection ? RemovalPolicy.SNAPSHOT : RemovalPolicy.DESTROY,
      autoMinorVersionUpgrade: true,
      // backendAuth 'iam': Sluice logs in with RDS IAM authentication tokens.
      iamAuthentication: backendAuth === 'iam',
      caCertificate: rds.CaCertificate.RDS_CA_RSA2048_G1,
      parameterGroup: new rds.ParameterGroup(this, 'DatabaseParameters', {
        engine,
        description: 'Sluice: TLS required (Sluice verifies the server certificate)',
        parameters: { require_secure_transport: '1' },
      }),
    });
    this.secret = this.database.secret!;
    Validations.of(this.database).acknowledge({
      id: 'AwsSolutions-RDS11',
      reason:
        'MySQL clients and the seed expect 3306; the instance is reachable only from the Sluice ' +
        'security group in isolated subnets, so a non-default port would hide nothing.',
    });
    if (!multiAz) {
      Validations.of(this.database).acknowledge({
        id: 'AwsSolutions-RDS3',
        reason:
          'Single-AZ by default to keep the demo deployment cheap, as in the seed; pass ' +
          'multiAz (context multiAz=true) for a standby in a second zone.',
      });
    }
    if (!deletionProtection) {
      Validations.of(this.database).acknowledge({
        id: 'AwsSolutions-RDS10',
        reason: 'Deletion protection was turned off explicitly (context deletionProtection=false).',
      });
    }

    // ---- Sluice: ECS Fargate tasks or EC2 instances, configured alike -----------------------------
    // One settings object for either hosting: the Fargate container's environment and the EC2
    // hosts' /etc/sluice/sluice.env both come from sluiceEnvironment(settings).
    const clientTlsSecret =
      props.clientTlsSecretArn === undefined
        ? undefined
        : secretsmanager.Secret.fromSecretCompleteArn(
            this,
            'ClientTlsSecret',
            props.clientTlsSecretArn,
          );
    const settings: SluiceSettings = {
      listenHost: '0.0.0.0',
      healthHost: '0.0.0.0',
      backendAddress: `${this.database.dbInstanceEndpointAddress}:${this.database.dbInstanceEndpointPort}`,
      backendMaxConnections: props.backendMaxConnections ?? 20,
      // With RDS IAM tokens Sluice needs no password, so it reads no secret.
      secretArns: backendAuth === 'iam' ? [] : [this.secret.secretArn],
      shutdownTimeout,
      clientTlsSecret,
      ...(clientAuth === 'iam'
        ? {
            iam: {
              audience,
              // The Lambda's role; its sessions resolve to it. Lazy: the function comes later.
              identities: [
                {
                  arn: Lazy.string({ produce: () => this.function.role!.roleArn }),
                  databaseUser: iamUser,
                },
              ],
              stsRegion: this.region,
            },
          }
        : {}),
      ...(backendAuth === 'iam' ? { rdsIamUsers: [iamUser], rdsIamRegion: this.region } : {}),
    };
    let target: elbv2.INetworkLoadBalancerTarget;
    if (this.hosting === 'fargate') {
      if (props.sluiceImage === undefined) {
        throw new Error('Fargate hosting needs sluiceImage');
      }
      const cluster = new ecs.Cluster(this, 'Cluster', {
        vpc: this.vpc,
        containerInsightsV2: ecs.ContainerInsights.ENABLED,
      });
      const taskDefinition = new ecs.FargateTaskDefinition(this, 'SluiceTask', {
        cpu: props.taskCpu ?? 512,
        memoryLimitMiB: props.taskMemoryMiB ?? 1024,
        runtimePlatform: {
          cpuArchitecture: ecs.CpuArchitecture.ARM64,
          operatingSystemFamily: ecs.OperatingSystemFamily.LINUX,
        },
      });
      addSluiceContainer(this, taskDefinition, {
        image: props.sluiceImage,
        portMappings: true,
        logging: ecs.LogDrivers.awsLogs({
          streamPrefix: 'sluice',
          logGroup: new logs.LogGroup(this, 'SluiceLogs', { retention: logRetention }),
        }),
        settings,
      });
      if (backendAuth === 'iam') {
        // rds-db:connect as exactly the one database user, on exactly this instance.
        taskDefinition.taskRole.addToPrincipalPolicy(
          new iam.PolicyStatement({
            sid: 'ConnectToTheDatabaseWithIam',
            actions: ['rds-db:connect'],
            resources: [
              Stack.of(this).formatArn({
                service: 'rds-db',
                resource: 'dbuser',
                resourceName: `${this.database.instanceResourceId}/${iamUser}`,
                arnFormat: ArnFormat.COLON_RESOURCE_NAME,
              }),
            ],
          }),
        );
      } else {
        grantSecretRead(taskDefinition.taskRole, this.secret);
      }
      Validations.of(taskDefinition).acknowledge({
        id: 'AwsSolutions-ECS2',
        reason:
          'The environment holds Sluice configuration only (addresses, limits, the secret ARN); ' +
          'no secret value. Sluice fetches the credentials from Secrets Manager at run time.',
      });

      const service = new ecs.FargateService(this, 'SluiceService', {
        cluster,
        taskDefinition,
        desiredCount: taskCount,
        vpcSubnets: isolated,
        securityGroups: [this.sluiceSecurityGroup],
        assignPublicIp: false,
        minHealthyPercent: 100,
        maxHealthyPercent: 200,
        circuitBreaker: { enable: true, rollback: true },
        healthCheckGracePeriod: Duration.seconds(60),
        platformVersion: ecs.FargatePlatformVersion.LATEST,
        propagateTags: ecs.PropagatedTagSource.SERVICE,
        enableECSManagedTags: true,
      });
      // The task must not start before the database and its secret are complete.
      service.node.addDependency(this.database);
      this.fargate = { cluster, service };
      target = service.loadBalancerTarget({ containerName: 'sluice', containerPort: MYSQL_PORT });
    } else {
      if (props.sluiceBinary === undefined || props.rdsCaBundle === undefined) {
        throw new Error('EC2 hosting needs sluiceBinary and rdsCaBundle (see infra/README.md)');
      }
      this.ec2Hosts = new SluiceHosts(this, 'SluiceHosts', {
        vpc: this.vpc,
        vpcSubnets: isolated,
        securityGroup: this.sluiceSecurityGroup,
        settings,
        secret: this.secret,
        binary: props.sluiceBinary,
        rdsCaBundle: props.rdsCaBundle,
        instanceType: props.instanceType,
        desiredCapacity: props.instanceCount,
        minCapacity: props.minInstances,
        maxCapacity: props.maxInstances,
      });
      // Hosts signal once /readyz answers, which needs the database and its secret.
      this.ec2Hosts.autoScalingGroup.node.addDependency(this.database);
      target = this.ec2Hosts.autoScalingGroup;
    }

    this.loadBalancer = new elbv2.NetworkLoadBalancer(this, 'LoadBalancer', {
      vpc: this.vpc,
      vpcSubnets: isolated,
      internetFacing: false,
      crossZoneEnabled: true,
      securityGroups: [this.loadBalancerSecurityGroup],
    });
    Validations.of(this.loadBalancer).acknowledge({
      id: 'AwsSolutions-ELB2',
      reason:
        'NLB access logs record TLS listeners only; this internal TCP listener would log nothing. ' +
        'VPC flow logs cover the connections.',
    });
    this.targetGroup = new elbv2.NetworkTargetGroup(this, 'SluiceTargets', {
      vpc: this.vpc,
      port: MYSQL_PORT,
      protocol: elbv2.Protocol.TCP,
      targetType: this.hosting === 'ec2' ? elbv2.TargetType.INSTANCE : elbv2.TargetType.IP,
      // Traffic reaches the tasks from the NLB's own addresses, so the Sluice security group
      // admits the NLB's group rather than every client's. (Instance targets would preserve
      // client addresses by default.)
      preserveClientIp: false,
      // While a task or instance drains, its open sessions carry on and new ones go elsewhere;
      // then ECS (or systemd, when the instance shuts down) sends SIGTERM and Sluice gets the
      // same time again to finish open transactions.
      deregistrationDelay: shutdownTimeout,
      healthCheck: {
        protocol: elbv2.Protocol.HTTP,
        port: String(HEALTH_PORT),
        path: '/readyz',
        healthyHttpCodes: '200',
        interval: Duration.seconds(10),
        timeout: Duration.seconds(5),
        healthyThresholdCount: 2,
        unhealthyThresholdCount: 2,
      },
      targets: [target],
    });
    this.loadBalancer.addListener('Mysql', {
      port: MYSQL_PORT,
      protocol: elbv2.Protocol.TCP,
      defaultTargetGroups: [this.targetGroup],
    });

    // ---- The Lambda ---------------------------------------------------------------------------------
    this.function = new lambda.Function(this, 'Function', {
      description: 'Sluice demo: queries MySQL through Sluice',
      runtime: lambda.Runtime.PROVIDED_AL2023,
      architecture: lambda.Architecture.ARM_64,
      handler: 'bootstrap',
      code: props.functionCode,
      memorySize: props.functionMemoryMiB ?? 256,
      timeout: props.functionTimeout ?? Duration.seconds(10),
      vpc: this.vpc,
      vpcSubnets: isolated,
      securityGroups: [this.lambdaSecurityGroup],
      environment: {
        PROXY_ENDPOINT: this.loadBalancer.loadBalancerDnsName,
        ...(props.databaseName ? { DB_NAME: props.databaseName } : {}),
        ...(clientAuth === 'iam'
          ? {
              // No secret: the execution role signs a token, sent over TLS to a Sluice whose
              // certificate chains to this CA.
              AUTH_MODE: 'iam',
              DB_USER: iamUser,
              SLUICE_AUDIENCE: audience,
              DB_TLS: 'required',
              DB_TLS_CA_PEM: props.clientTlsCaPem ?? '',
            }
          : { SECRET_ARN: this.secret.secretArn }),
      },
      logGroup: new logs.LogGroup(this, 'FunctionLogs', { retention: logRetention }),
    });
    if (clientAuth === 'secret') {
      grantSecretRead(this.function, this.secret);
    }
    for (const policy of ['AWSLambdaBasicExecutionRole', 'AWSLambdaVPCAccessExecutionRole']) {
      Validations.of(this.function.role!).acknowledge({
        id: `AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/${policy}]`,
        reason:
          'AWS-maintained policies a Lambda in a VPC needs: writing its logs and managing its ' +
          'network interfaces (the task asks for AWSLambdaVPCAccessExecutionRole explicitly). ' +
          'They grant nothing on the secret, the key or the database.',
      });
    }

    new CfnOutput(this, 'ProxyEndpoint', {
      description: 'Sluice (internal NLB) host name; clients connect on port 3306',
      value: this.loadBalancer.loadBalancerDnsName,
    });
    new CfnOutput(this, 'SecretArn', {
      description: 'Database credentials (RDS secret format)',
      value: this.secret.secretArn,
    });
    if (backendAuth === 'iam') {
      const database = props.databaseName ?? '';
      new CfnOutput(this, 'CreateIamDatabaseUser', {
        description:
          'Run once as the master user (credentials in SecretArn) to create the user Sluice ' +
          'logs in as with RDS IAM tokens',
        value:
          `CREATE USER IF NOT EXISTS '${iamUser}'@'%' IDENTIFIED WITH AWSAuthenticationPlugin ` +
          `AS 'RDS' REQUIRE SSL; GRANT ALL PRIVILEGES ON \`${database}\`.* TO '${iamUser}'@'%';`,
      });
    }
    new CfnOutput(this, 'FunctionName', {
      description: 'The Lambda that queries through Sluice',
      value: this.function.functionName,
    });
  }
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) {
    throw new Error(`${name} must be a positive integer, got ${value}`);
  }
  return value;
}
