//===- PlanFormats.h - Printing a training plan -----------------*- C++ -*-===//
//
// The three renderings of `moec plan`: a readable table, JSON (schema
// "moec-plan/1", documented in docs/plan.md) and an SVG drawing of the mesh
// with per-rank memory bars. They only format a moec::plan::TrainingPlan;
// every number comes from the library.
//
//===----------------------------------------------------------------------===//

#ifndef TOOLS_MOEC_PLANFORMATS_H
#define TOOLS_MOEC_PLANFORMATS_H

#include "moec/Plan/Plan.h"

#include "llvm/Support/JSON.h"
#include "llvm/Support/raw_ostream.h"

namespace moec::cli {

/// The readable report; with `allPlacements` every parameter's shard on every
/// rank, otherwise the embedding, layer 0 and the head.
void printPlanTable(const plan::TrainingPlan &plan, bool allPlacements,
                    llvm::raw_ostream &os);
llvm::json::Value planToJson(const plan::TrainingPlan &plan);
void printPlanSvg(const plan::TrainingPlan &plan, llvm::raw_ostream &os);

void printRecommendationsTable(llvm::ArrayRef<plan::Recommendation> list,
                               llvm::raw_ostream &os);
llvm::json::Value recommendationsToJson(
    llvm::ArrayRef<plan::Recommendation> list);

} // namespace moec::cli

#endif // TOOLS_MOEC_PLANFORMATS_H
