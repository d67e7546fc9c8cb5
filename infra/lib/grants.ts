import { Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';

/**
 * Lets `grantee` read `secret` and nothing else: GetSecretValue and DescribeSecret on that one
 * secret, and kms:Decrypt on that one key only when Secrets Manager asks on the caller's behalf.
 *
 * Unlike `secret.grantRead`, this writes both statements into the grantee's own (identity)
 * policy and leaves the key policy alone, so the permission is visible in one place and a key
 * owned by another stack is never edited from here (which would create a dependency cycle).
 */
export function grantSecretRead(grantee: iam.IGrantable, secret: secretsmanager.ISecret): void {
  const statements = [
    new iam.PolicyStatement({
      sid: 'ReadTheDatabaseSecret',
      actions: ['secretsmanager:GetSecretValue', 'secretsmanager:DescribeSecret'],
      resources: [secret.secretArn],
    }),
  ];
  if (secret.encryptionKey) {
    statements.push(
      new iam.PolicyStatement({
        sid: 'DecryptTheDatabaseSecret',
        actions: ['kms:Decrypt'],
        resources: [secret.encryptionKey.keyArn],
        conditions: {
          StringEquals: {
            'kms:ViaService': `secretsmanager.${Stack.of(secret).region}.amazonaws.com`,
          },
        },
      }),
    );
  }
  for (const statement of statements) {
    if (!grantee.grantPrincipal.addToPrincipalPolicy(statement).statementAdded) {
      throw new Error(`cannot attach a policy to ${grantee.grantPrincipal}`);
    }
  }
}
