// @ts-check
// ESLint flat config: `npm run lint` (also a step of `npm test`, scripts/test.sh).
// @eslint/js recommended + typescript-eslint recommended (the non-type-checked set: fast on small machines;
// `tsc --noEmit` already runs in the typecheck step).
import js from '@eslint/js';
import { defineConfig, globalIgnores } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig(
  globalIgnores(['dist/', 'node_modules/', 'bundles/', '.caracal/', '.services/', 'coverage/']),
  {
    files: ['**/*.{js,mjs,cjs,ts,mts,cts}'],
    extends: [js.configs.recommended, tseslint.configs.recommended],
    rules: {
      // A leading underscore marks a deliberately unused binding (callback parameters kept for their position, etc.).
      '@typescript-eslint/no-unused-vars': [
        'error',
        {
          argsIgnorePattern: '^_',
          varsIgnorePattern: '^_',
          caughtErrorsIgnorePattern: '^_',
          destructuredArrayIgnorePattern: '^_',
        },
      ],
    },
  },
  {
    // Plain JavaScript (bin/caracal.js, this file) runs on Node: its globals are not typed by tsc here.
    files: ['**/*.{js,mjs,cjs}'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly' } },
  },
);
