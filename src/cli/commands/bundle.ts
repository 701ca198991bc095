import path from 'node:path';
import type { Command } from 'commander';
import { DEFAULT_BUNDLE, PACKAGE_ROOT, POLICIES_DIR } from '../../paths.js';
import { buildBundle, gitRevision } from '../../policy/bundle.js';
import type { CliRuntime } from '../runtime.js';

export function registerBundleCommands(program: Command, rt: () => CliRuntime): void {
  const bundle = program.command('bundle').description('policy bundles (Rego compiled to WASM)');
  bundle
    .command('build')
    .description('compile policies with `opa build -t wasm` (revision = git commit)')
    .option('--policies <dir>', 'Rego sources', POLICIES_DIR)
    .option('--out <file>', 'bundle file to write', DEFAULT_BUNDLE)
    .option('--revision <rev>', 'revision to stamp (default: the git commit of the policies)')
    .option('--opa <path>', 'opa binary (default: policy.opaBin / CARACAL_OPA_BIN)')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const policiesDir = path.resolve(options.policies);
      const result = await buildBundle({
        opaBin: options.opa ?? runtime.config().policy.opaBin,
        policiesDir,
        outFile: path.resolve(options.out),
        revision: options.revision ?? (await gitRevision(policiesDir === POLICIES_DIR ? PACKAGE_ROOT : policiesDir)),
      });
      if (options.json) runtime.out.json(result);
      else runtime.out.line(`built ${result.outFile} revision=${result.revision} sha256=${result.sha256}`);
    });
}
