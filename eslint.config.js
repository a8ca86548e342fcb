// Lint rules that protect determinism and layering. The simulation replays a run from a seed,
// so real time, real randomness and bare timers may only enter src/ through src/time/real-clock.ts.
import tseslint from 'typescript-eslint';

const realTimeBan = {
  'no-restricted-properties': [
    'error',
    { object: 'Date', property: 'now', message: 'Use the injected Clock (src/time).' },
    { object: 'Math', property: 'random', message: 'Use the injected seeded Random (src/random).' },
    { object: 'crypto', property: 'randomUUID', message: 'Use the injected seeded Random (src/random).' },
    { object: 'performance', property: 'now', message: 'Use the injected Clock (src/time).' },
    { object: 'process', property: 'hrtime', message: 'Use the injected Clock (src/time).' },
  ],
  'no-restricted-globals': [
    'error',
    ...['setTimeout', 'setInterval', 'setImmediate', 'clearTimeout', 'clearInterval', 'clearImmediate'].map(
      (name) => ({ name, message: 'Timers go through the injected Clock (src/time).' }),
    ),
  ],
  'no-restricted-syntax': [
    'error',
    { selector: "NewExpression[callee.name='Date'][arguments.length=0]", message: 'Use the injected Clock (src/time).' },
    { selector: "ImportDeclaration[source.value=/^(node:)?timers/]", message: 'Timers go through the injected Clock (src/time).' },
    { selector: "ImportDeclaration[source.value=/^(node:)?crypto$/] ImportSpecifier[imported.name=/^(randomUUID|randomBytes|randomInt)$/]", message: 'Use the injected seeded Random (src/random).' },
  ],
};

export default tseslint.config(
  { ignores: ['node_modules/**', 'dist/**', 'native/build/**'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-non-null-assertion': 'off',
    },
  },
  { files: ['src/**/*.ts'], ignores: ['src/time/real-clock.ts'], rules: realTimeBan },
  {
    // Machines are pure: no I/O, no transports, no fabrics, no engines.
    files: ['src/machines/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        { patterns: ['node:*', '../transport/*', '../fabric/*', '../engine/*', '../actors/*', '../runtime/*'] },
      ],
    },
  },
  {
    // Actors depend on interfaces; only runtime/ picks concrete implementations.
    files: ['src/actors/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        { patterns: ['**/memory/*', '**/sim/*', '**/nats/*', '**/tcp/*', '**/verbs/*', '@nats-io/*'] },
      ],
    },
  },
);
