// Runs `tandem simulate` on its own: `npx tsx simulations/cli.ts simulate --help`. The tandem CLI
// (src/cli/main.ts) registers the same command.
import { Command } from 'commander';
import { registerSimulateCommand } from '../src/cli/simulate-command.js';

const program = new Command('tandem');
registerSimulateCommand(program);
await program.parseAsync(process.argv);
