/**
 * The other way to run Sluice: as a sidecar in an application's own ECS task, like a local
 * connection pooler. The application connects to 127.0.0.1:3306 with the database user's own
 * name and password; Sluice, in the same network namespace, holds the few backend connections.
 *
 *   const sidecar = new SluiceSidecar(this, 'Sluice', { taskDefinition, image, backendAddress, secret });
 *   sidecar.serve(appContainer); // the app starts after Sluice and stops before it
 */
import { Duration } from 'aws-cdk-lib';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';

import { grantSecretRead } from './grants';
import { addSluiceContainer, MYSQL_PORT } from './sluice-container';

export interface SluiceSidecarProps {
  /** The application's task definition; it must use the awsvpc network mode (Fargate does). */
  readonly taskDefinition: ecs.TaskDefinition;
  /** The Sluice image. */
  readonly image: ecs.ContainerImage;
  /** host:port of the database. */
  readonly backendAddress: string;
  /** The database credentials (RDS secret format); the task role may read it and nothing else. */
  readonly secret: secretsmanager.ISecret;
  /** Backend connections this task's Sluice may open (default 5: one task, a small pool). */
  readonly backendMaxConnections?: number;
  /** How long Sluice lets open transactions finish after SIGTERM (default 30 s). */
  readonly shutdownTimeout?: Duration;
  /** Where the container logs go (default: awslogs with the stream prefix "sluice"). */
  readonly logging?: ecs.LogDriver;
  /** CPU units reserved for Sluice in the task (default none: shared). */
  readonly cpu?: number;
  /** Memory reserved for Sluice in MiB (default 64). */
  readonly memoryReservationMiB?: number;
}

export class SluiceSidecar extends Construct {
  /** The address the application connects to. */
  static readonly HOST = '127.0.0.1';
  static readonly PORT = MYSQL_PORT;

  readonly container: ecs.ContainerDefinition;

  constructor(scope: Construct, id: string, props: SluiceSidecarProps) {
    super(scope, id);
    if (props.taskDefinition.networkMode !== ecs.NetworkMode.AWS_VPC) {
      throw new Error(
        'SluiceSidecar needs a task definition in awsvpc network mode: only there do the ' +
          "application and Sluice share 127.0.0.1 (got '" +
          `${props.taskDefinition.networkMode}')`,
      );
    }
    this.container = addSluiceContainer(this, props.taskDefinition, {
      image: props.image,
      // Reachable only from inside the task: no port mappings, loopback listeners.
      portMappings: false,
      logging: props.logging ?? ecs.LogDrivers.awsLogs({ streamPrefix: 'sluice' }),
      cpu: props.cpu,
      memoryReservationMiB: props.memoryReservationMiB ?? 64,
      settings: {
        listenHost: SluiceSidecar.HOST,
        healthHost: SluiceSidecar.HOST,
        backendAddress: props.backendAddress,
        backendMaxConnections: props.backendMaxConnections ?? 5,
        secretArns: [props.secret.secretArn],
        shutdownTimeout: props.shutdownTimeout ?? Duration.seconds(30),
      },
    });
    grantSecretRead(props.taskDefinition.taskRole, props.secret);
  }

  /**
   * Makes `app` start after Sluice has started and, since ECS stops containers in reverse
   * dependency order, stop before it: the application's last queries still find the proxy.
   * Sets DB_HOST and DB_PORT on the application container.
   */
  serve(app: ecs.ContainerDefinition): void {
    if (app === this.container) {
      throw new Error('the application container cannot depend on Sluice itself');
    }
    app.addContainerDependencies({
      container: this.container,
      condition: ecs.ContainerDependencyCondition.START,
    });
    app.addEnvironment('DB_HOST', SluiceSidecar.HOST);
    app.addEnvironment('DB_PORT', String(SluiceSidecar.PORT));
  }
}
