/**
 * An example of the sidecar: an application service in the same VPC whose task carries its
 * own Sluice. The application reaches the database only through 127.0.0.1:3306; the task's
 * security group is admitted to the database on 3306 and to the VPC endpoints on 443.
 */
import { Stack, StackProps, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecr from 'aws-cdk-lib/aws-ecr';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as rds from 'aws-cdk-lib/aws-rds';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';

import { MYSQL_PORT } from './sluice-container';
import { SluiceSidecar } from './sluice-sidecar';

export interface SidecarExampleStackProps extends StackProps {
  readonly vpc: ec2.IVpc;
  readonly database: rds.IDatabaseInstance;
  readonly databaseSecurityGroup: ec2.ISecurityGroup;
  readonly endpointSecurityGroup: ec2.ISecurityGroup;
  readonly secret: secretsmanager.ISecret;
  readonly sluiceImage: ecs.ContainerImage;
  /**
   * The application's ECR repository, in this account and region (the isolated subnets reach
   * ECR through the VPC endpoints, and no other registry).
   */
  readonly appRepositoryName: string;
  /** The application image's tag. */
  readonly appImageTag: string;
}

export class SidecarExampleStack extends Stack {
  readonly taskDefinition: ecs.FargateTaskDefinition;
  readonly sidecar: SluiceSidecar;
  readonly appSecurityGroup: ec2.SecurityGroup;

  constructor(scope: Construct, id: string, props: SidecarExampleStackProps) {
    super(scope, id, props);
    const logGroup = new logs.LogGroup(this, 'Logs', { retention: logs.RetentionDays.ONE_MONTH });
    this.taskDefinition = new ecs.FargateTaskDefinition(this, 'AppTask', {
      cpu: 256,
      memoryLimitMiB: 512,
      runtimePlatform: {
        cpuArchitecture: ecs.CpuArchitecture.ARM64,
        operatingSystemFamily: ecs.OperatingSystemFamily.LINUX,
      },
    });
    const app = this.taskDefinition.addContainer('app', {
      image: ecs.ContainerImage.fromEcrRepository(
        ecr.Repository.fromRepositoryName(this, 'AppRepository', props.appRepositoryName),
        props.appImageTag,
      ),
      essential: true,
      readonlyRootFilesystem: true,
      logging: ecs.LogDrivers.awsLogs({ streamPrefix: 'app', logGroup }),
    });
    this.sidecar = new SluiceSidecar(this, 'Sluice', {
      taskDefinition: this.taskDefinition,
      image: props.sluiceImage,
      backendAddress: `${props.database.dbInstanceEndpointAddress}:${props.database.dbInstanceEndpointPort}`,
      secret: props.secret,
      logging: ecs.LogDrivers.awsLogs({ streamPrefix: 'sluice', logGroup }),
    });
    this.sidecar.serve(app);
    Validations.of(this.taskDefinition).acknowledge({
      id: 'AwsSolutions-ECS2',
      reason:
        'Plain configuration only (DB_HOST, DB_PORT and the SLUICE_* settings with the secret ' +
        'ARN); Sluice fetches the credentials from Secrets Manager at run time.',
    });

    this.appSecurityGroup = new ec2.SecurityGroup(this, 'AppSecurityGroup', {
      vpc: props.vpc,
      description: 'Application with a Sluice sidecar: no inbound traffic',
      allowAllOutbound: false,
    });
    // The ingress rules on the main stack's groups are created here, in the stack that
    // references them, so the main stack never depends on this one.
    this.appSecurityGroup.addEgressRule(
      props.databaseSecurityGroup,
      ec2.Port.tcp(MYSQL_PORT),
      'Sluice sidecar to RDS',
    );
    new ec2.CfnSecurityGroupIngress(this, 'DatabaseFromSidecar', {
      groupId: props.databaseSecurityGroup.securityGroupId,
      sourceSecurityGroupId: this.appSecurityGroup.securityGroupId,
      ipProtocol: 'tcp',
      fromPort: MYSQL_PORT,
      toPort: MYSQL_PORT,
      description: 'Sluice sidecar to RDS',
    });
    this.appSecurityGroup.addEgressRule(
      ec2.Peer.anyIpv4(),
      ec2.Port.tcp(443),
      'HTTPS to the VPC endpoints and the S3 gateway (no internet route exists)',
    );
    new ec2.CfnSecurityGroupIngress(this, 'EndpointsFromSidecar', {
      groupId: props.endpointSecurityGroup.securityGroupId,
      sourceSecurityGroupId: this.appSecurityGroup.securityGroupId,
      ipProtocol: 'tcp',
      fromPort: 443,
      toPort: 443,
      description: 'Sidecar example to VPC endpoints',
    });

    new ecs.FargateService(this, 'AppService', {
      cluster: new ecs.Cluster(this, 'Cluster', {
        vpc: props.vpc,
        containerInsightsV2: ecs.ContainerInsights.ENABLED,
      }),
      taskDefinition: this.taskDefinition,
      desiredCount: 1,
      minHealthyPercent: 100,
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_ISOLATED },
      securityGroups: [this.appSecurityGroup],
      assignPublicIp: false,
      circuitBreaker: { enable: true, rollback: true },
    });
  }
}
