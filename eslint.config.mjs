// ESLint for the TypeScript and JavaScript (npm run lint). Formatting is Prettier's (.prettierrc).
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: [
      'dist/',
      'build/',
      'build-san/',
      'node_modules/',
      'docs/api/',
      'prebuilds/',
      'native/',
      '.rig/',
      'coverage/',
      'bench/build/',
      'bench/dist/',
      'examples/dist/',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: globals.node },
    rules: {
      // Unused arguments keep the shape of callbacks and overrides; a leading _ marks them.
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' },
      ],
    },
  },
  {
    files: ['**/*.js', '**/*.cjs'],
    languageOptions: { sourceType: 'commonjs' },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
);
