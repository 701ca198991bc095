import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { DEFAULT_BUNDLE, PACKAGE_ROOT, POLICIES_DIR } from '../../paths.js';
import { buildBundle, gitRevision, signBundle, verifyBundleFile } from '../../policy/bundle.js';
import { DEFAULT_KEY_ID, loadSigningKey, loadVerificationKey } from '../../policy/signing.js';
import { CaracalError } from '../../errors/catalog.js';
import type { CliRuntime } from '../runtime.js';
import { registerBundleDiffCommand } from './bundle-diff.js';
import { registerBundleStoreCommands } from './bundle-store.js';

export function registerBundleCommands(program: Command, rt: () => CliRuntime): void {
  const bundle = program.command('bundle').description('policy bundles (Rego compiled to WASM)');
  bundle
    .command('build')
    .description('compile policies with `opa build -t wasm` (revision = the git commit of the policies; a dirty tree is refused)')
    .option('--policies <dir>', 'Rego sources', POLICIES_DIR)
    .option('--out <file|dir/>', 'bundle file to write (a directory: <dir>/bundle.tar.gz)', DEFAULT_BUNDLE)
    .option('--revision <rev>', 'revision to stamp (default: the git commit of the policies)')
    .option('--allow-dirty', 'build uncommitted policies anyway; the revision says so (<commit>-dirty, or uncommitted)')
    .option('--opa <path>', 'opa binary (default: policy.opaBin / CARACAL_OPA_BIN)')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const policiesDir = path.resolve(options.policies);
      const result = await buildBundle({
        opaBin: options.opa ?? runtime.config().policy.opaBin,
        policiesDir,
        outFile: await bundleOutFile(options.out),
        revision: options.revision ?? (await committedRevision(policiesDir, options.allowDirty === true)),
      });
      if (options.json) runtime.out.json(result);
      else runtime.out.line(`built ${result.outFile} revision=${result.revision} sha256=${result.sha256} opa=${result.metadata.opa_version} built_at=${result.metadata.build_time}`);
    });

  bundle
    .command('sign <bundle>')
    .description('sign a bundle in OPA\'s format (/.signatures.json; an existing signature is replaced)')
    .requiredOption('--key <pem>', 'private key PEM: ECDSA P-256 (ES256), RSA (RS256) or Ed25519 (EdDSA)')
    .option('--key-id <kid>', 'key id written into the signature (the gateway picks its public key by it)', DEFAULT_KEY_ID)
    .option('--out <file>', 'signed bundle to write (default: replace <bundle>)')
    .option('--json', 'print JSON')
    .action(async (file: string, options) => {
      const runtime = rt();
      const key = await loadSigningKey(path.resolve(options.key), options.keyId);
      const result = await signBundle({ inFile: file, outFile: options.out, key });
      if (options.json) runtime.out.json(result);
      else {
        runtime.out.line(
          `signed ${result.outFile} key_id=${result.keyId} alg=${result.algorithm} files=${result.files}${result.replaced ? ' (replaced the previous signature)' : ''} sha256=${result.sha256}`,
        );
      }
    });
  bundle
    .command('verify <bundle>')
    .description('check a bundle\'s signature: every file listed and hashed, signed by this key (exit 0, or one line why not)')
    .requiredOption('--public-key <pem>', 'public key PEM')
    .option('--key-id <kid>', 'require the signature to name this key id (default: accept any key id)')
    .option('--json', 'print JSON')
    .action(async (file: string, options) => {
      const runtime = rt();
      const key = await loadVerificationKey(path.resolve(options.publicKey), options.keyId ?? DEFAULT_KEY_ID);
      const result = await verifyBundleFile(path.resolve(file), { keys: [key], allowUnsigned: false, ignoreKeyId: options.keyId === undefined });
      if (options.json) runtime.out.json(result);
      else if (result.signed) runtime.out.line(`verified ${path.resolve(file)} key_id=${result.keyId} alg=${key.algorithm} files=${result.files}`);
    });
  registerBundleStoreCommands(bundle, rt);
  registerBundleDiffCommand(bundle, rt);
}

/**
 * The git commit the policies are built from. A bundle's revision must name what it was built from, so uncommitted
 * policies are refused unless `allowDirty`, and then the revision says so (`<commit>-dirty`, or `uncommitted`).
 */
async function committedRevision(policiesDir: string, allowDirty: boolean): Promise<string> {
  const inPackage = policiesDir === POLICIES_DIR;
  const revision = await gitRevision(inPackage ? PACKAGE_ROOT : policiesDir, inPackage ? 'policies' : '.');
  if (allowDirty || /^[0-9a-f]{40,64}$/.test(revision)) return revision;
  throw new CaracalError(
    'CARACAL_VALIDATION',
    revision === 'uncommitted'
      ? `the policies in ${policiesDir} are not in a git commit: commit them, or pass --revision or --allow-dirty`
      : `the policies in ${policiesDir} have uncommitted changes (git status): commit them, or pass --allow-dirty (revision ${revision})`,
  );
}

/** `--out`: a file, or a directory (existing, or written with a trailing slash) that gets `bundle.tar.gz`. */
async function bundleOutFile(out: string): Promise<string> {
  const resolved = path.resolve(out);
  const isDir = out.endsWith('/') || out.endsWith(path.sep) || (await stat(resolved).then((s) => s.isDirectory(), () => false));
  return isDir ? path.join(resolved, 'bundle.tar.gz') : resolved;
}
