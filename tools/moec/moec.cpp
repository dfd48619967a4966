//===- moec.cpp - The moec driver -----------------------------------------===//
//
// `moec <command> ...`: the user-facing driver. Each subcommand is in its own
// file (see Commands.h); this file registers the training job's flags with
// the commands that read a job, keeps LLVM's own options out of `--help`,
// and dispatches.
//
//===----------------------------------------------------------------------===//

#include "Commands.h"

#include "moec/Support/TrainingJob.h"

#include "llvm/Support/CommandLine.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/raw_ostream.h"

namespace cl = llvm::cl;

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  cl::OptionCategory jobCategory(
      "Training job options (flags, or keys of --config spelt with "
      "underscores)");
  moec::TrainingJobFlags job(
      {&moec::cli::planCommand, &moec::cli::trainCommand,
       &moec::cli::compileCommand},
      jobCategory);
  moec::cli::ImportFlags model(
      {&moec::cli::importCommand, &moec::cli::runCommand,
       &moec::cli::planCommand, &moec::cli::trainCommand,
       &moec::cli::compileCommand});
  // The libraries moec links register hundreds of options of their own
  // (code generation for every LLVM target); none is moec's.
  cl::HideUnrelatedOptions({}, cl::SubCommand::getTopLevel());
  cl::ParseCommandLineOptions(
      argc, argv,
      "moec: an ahead-of-time compiler for Mixture-of-Experts training\n");
  if (moec::cli::importCommand)
    return moec::cli::runImport(model);
  if (moec::cli::runCommand)
    return moec::cli::runRun(model);
  if (moec::cli::trainCommand)
    return moec::cli::runTrain(model, job);
  if (moec::cli::compileCommand)
    return moec::cli::runCompile(model, job);
  if (moec::cli::planCommand)
    return moec::cli::runPlan(model, job);
  if (moec::cli::launchCommand)
    return moec::cli::runLaunch();
  llvm::errs() << "moec: no command given; see 'moec --help'\n";
  return 1;
}
