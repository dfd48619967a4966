//===- moec.cpp - The moec driver -----------------------------------------===//
//
// `moec <command> ...`: the user-facing driver. Each subcommand is in its own
// file (see Commands.h); this file only dispatches.
//
//===----------------------------------------------------------------------===//

#include "Commands.h"

#include "llvm/Support/CommandLine.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/raw_ostream.h"

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  llvm::cl::ParseCommandLineOptions(
      argc, argv,
      "moec: an ahead-of-time compiler for Mixture-of-Experts training\n");
  if (moec::cli::importCommand)
    return moec::cli::runImport();
  if (moec::cli::runCommand)
    return moec::cli::runRun();
  if (moec::cli::trainCommand)
    return moec::cli::runTrain();
  if (moec::cli::compileCommand)
    return moec::cli::runCompile();
  if (moec::cli::planCommand)
    return moec::cli::runPlan();
  llvm::errs() << "moec: no command given; see 'moec --help'\n";
  return 1;
}
