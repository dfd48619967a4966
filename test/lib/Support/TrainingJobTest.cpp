//===- TrainingJobTest.cpp - Tests of the training job's reader -----------===//
//
// Every key read from a config file and from flag text, values of the wrong
// type, unknown keys, out-of-range values, the rules between keys, and the
// options each consumer refuses as not implemented yet.
//
//===----------------------------------------------------------------------===//

#include "moec/Support/TrainingJob.h"

#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FileUtilities.h"
#include "llvm/Support/raw_ostream.h"

#include <gtest/gtest.h>

using namespace moec;

namespace {

/// A config file holding `text`, removed when the test ends.
class ConfigFile {
public:
  explicit ConfigFile(llvm::StringRef text) {
    int fd;
    EXPECT_FALSE(llvm::sys::fs::createTemporaryFile("job", "json", fd, path));
    llvm::raw_fd_ostream os(fd, /*shouldClose=*/true);
    os << text;
  }
  ~ConfigFile() { llvm::sys::fs::remove(path); }
  llvm::StringRef getPath() const { return path; }

private:
  llvm::SmallString<128> path;
};

/// Reads `text` as a config over the defaults; the error, or "".
std::string readError(llvm::StringRef text, TrainingJob *job = nullptr) {
  ConfigFile file(text);
  TrainingJob local;
  llvm::Error err = readTrainingJobConfig(file.getPath(), job ? *job : local);
  if (!err)
    return "";
  std::string message = llvm::toString(std::move(err));
  // Leave out "config '<temporary path>': ".
  std::string prefix = "config '" + file.getPath().str() + "': ";
  if (llvm::StringRef(message).starts_with(prefix))
    return message.substr(prefix.size());
  return message;
}

std::string textError(llvm::StringRef key, llvm::StringRef text) {
  TrainingJob job;
  llvm::Error err = setTrainingJobText(job, key, text);
  return err ? llvm::toString(std::move(err)) : "";
}

std::string implementedError(const TrainingJob &job, JobConsumer consumer) {
  llvm::Error err = checkImplemented(job, consumer);
  return err ? llvm::toString(std::move(err)) : "";
}

} // namespace

TEST(TrainingJob, ReadsEveryKey) {
  TrainingJob job;
  EXPECT_EQ(readError(R"({
    "micro_batch_size": 4, "seq_length": 2048, "global_batch_size": 32,
    "bf16": true, "param_dtype": "bf16", "fp8": true,
    "moe_load_balancing": "sinkhorn", "router_aux_loss_coef": 0.01,
    "router_z_loss_coef": 0.001, "moe_all_to_all_dispatcher": false,
    "global_token_shuffle": true, "weight_decay": 0.05, "beta1": 0.8,
    "beta2": 0.99, "adam_epsilon": 1e-6, "max_grad_norm": 0.5,
    "initializer_range": 0.01, "random_seed": 7, "delayed_param": false,
    "recompute_experts": true, "keep_param_copies": false,
    "activation_checkpointing": "selective", "sm_activation_offloading": true,
    "activation_loading_horizon": 3, "world_size": 16,
    "expert_parallel_degree": 2, "hybrid_shard_degree": 4,
    "sharding_strategy": "full_shard", "checkpoint_dir": "ckpt",
    "custom_ops": {"my.domain::GroupedGemm": "grouped_matmul"}})",
                      &job),
            "");
  EXPECT_EQ(job.microBatchSize, 4);
  EXPECT_EQ(job.seqLength, 2048);
  EXPECT_EQ(job.globalBatchSize, 32);
  EXPECT_TRUE(job.bf16);
  EXPECT_EQ(job.paramDtype, ParamDtype::Bf16);
  EXPECT_TRUE(job.fp8);
  EXPECT_EQ(job.loadBalancing, mlir::moe::LoadBalancing::sinkhorn);
  EXPECT_EQ(job.routerAuxLossCoef, 0.01);
  EXPECT_EQ(job.routerZLossCoef, 0.001);
  EXPECT_FALSE(job.moeAllToAllDispatcher);
  EXPECT_TRUE(job.globalTokenShuffle);
  EXPECT_EQ(job.weightDecay, 0.05);
  EXPECT_EQ(job.beta1, 0.8);
  EXPECT_EQ(job.beta2, 0.99);
  EXPECT_EQ(job.adamEpsilon, 1e-6);
  EXPECT_EQ(job.maxGradNorm, 0.5);
  EXPECT_EQ(job.initializerRange, 0.01);
  EXPECT_EQ(job.randomSeed, 7);
  EXPECT_FALSE(job.delayedParam);
  EXPECT_TRUE(job.recomputeExperts);
  EXPECT_FALSE(job.keepParamCopies);
  EXPECT_EQ(job.activationCheckpointing, ActivationCheckpointing::Selective);
  EXPECT_TRUE(job.smActivationOffloading);
  EXPECT_EQ(job.activationLoadingHorizon, 3);
  EXPECT_EQ(job.worldSize, 16);
  EXPECT_EQ(job.expertParallelDegree, 2);
  EXPECT_EQ(job.hybridShardDegree, 4);
  EXPECT_EQ(job.shardingStrategy, ShardingStrategy::FullShard);
  EXPECT_EQ(job.checkpointDir, "ckpt");
  ASSERT_EQ(job.customOps.size(), 1u);
  EXPECT_EQ(job.customOps[0].name(), "my.domain::GroupedGemm");
  EXPECT_EQ(job.customOps[0].kind, CustomOpKind::GroupedMatMul);
  EXPECT_EQ(job.customOps[0].origin,
            R"(custom_ops {"my.domain::GroupedGemm": "grouped_matmul"})");
  EXPECT_TRUE(job.isExplicit("seq_length"));
  EXPECT_FALSE(TrainingJob().isExplicit("seq_length"));

  // The manifest's form of the job reads back to the same job.
  std::string text;
  llvm::raw_string_ostream os(text);
  os << llvm::json::Value(job.toJson());
  TrainingJob again;
  EXPECT_EQ(readError(text, &again), "");
  EXPECT_EQ(llvm::json::Value(again.toJson()), llvm::json::Value(job.toJson()));
}

TEST(TrainingJob, EveryKeyIsDocumented) {
  // Each key of the table is in the manifest (aliases aside) and reads back.
  llvm::json::Object json = TrainingJob().toJson();
  for (const TrainingJobKey &key : trainingJobKeys()) {
    EXPECT_FALSE(key.help.empty()) << key.name.str();
    // custom_ops alone has no flag of its own (--custom-op is another one's).
    EXPECT_EQ(key.flag.empty(), key.name == "custom_ops") << key.name.str();
    EXPECT_EQ(key.flag.find('_'), std::string::npos) << key.flag;
    if (key.aliasOf.empty()) {
      EXPECT_TRUE(json.get(key.name)) << key.name.str();
    }
  }
  EXPECT_EQ(json.size(), trainingJobKeys().size() - 1);
}

TEST(TrainingJob, SeedIsRandomSeed) {
  TrainingJob job;
  EXPECT_EQ(readError(R"({"seed": 99})", &job), "");
  EXPECT_EQ(job.randomSeed, 99);
  EXPECT_TRUE(job.isExplicit("random_seed"));
  EXPECT_EQ(readError(R"({"seed": 99, "random_seed": 99})"), "");
  EXPECT_EQ(readError(R"({"seed": 99, "random_seed": 7})"),
            "random_seed 7 and seed 99 are one option with two values");
}

TEST(TrainingJob, WrongTypes) {
  EXPECT_EQ(readError(R"({"micro_batch_size": 2.5})"),
            "micro_batch_size 2.5 must be an integer");
  EXPECT_EQ(readError(R"({"micro_batch_size": "two"})"),
            "micro_batch_size must be an integer, not \"two\"");
  EXPECT_EQ(readError(R"({"bf16": 1})"), "bf16 must be true or false, not 1");
  EXPECT_EQ(readError(R"({"beta1": "0.9"})"),
            "beta1 must be a number, not \"0.9\"");
  EXPECT_EQ(readError(R"({"moe_load_balancing": 3})"),
            "moe_load_balancing must be one of aux_loss, sinkhorn, balanced, "
            "none, not 3");
  EXPECT_EQ(readError(R"({"checkpoint_dir": false})"),
            "checkpoint_dir must be a string, not false");
  EXPECT_EQ(readError(R"({"sharding_strategy": null})"),
            "sharding_strategy must be one of full_shard, hybrid_shard, "
            "no_shard, not null");
}

TEST(TrainingJob, UnknownKeysAndValues) {
  EXPECT_EQ(readError(R"({"seq_len": 64})").substr(0, 58),
            "unknown key 'seq_len' (known: micro_batch_size, seq_length");
  EXPECT_EQ(readError(R"({"moe_load_balancing": "greedy"})"),
            "moe_load_balancing 'greedy' is not one of aux_loss, sinkhorn, "
            "balanced, none");
  EXPECT_EQ(readError(R"({"param_dtype": "fp16"})"),
            "param_dtype 'fp16' is not one of fp32, bf16");
  EXPECT_EQ(readError(R"({"activation_checkpointing": "some"})"),
            "activation_checkpointing 'some' is not one of none, selective, "
            "full, auto");
}

TEST(TrainingJob, ActivationCheckpointingSpellings) {
  // SMP's boolean: true is full, false is none, as JSON or as a flag.
  TrainingJob job;
  EXPECT_EQ(readError(R"({"activation_checkpointing": true})", &job), "");
  EXPECT_EQ(job.activationCheckpointing, ActivationCheckpointing::Full);
  EXPECT_EQ(readError(R"({"activation_checkpointing": false})", &job), "");
  EXPECT_EQ(job.activationCheckpointing, ActivationCheckpointing::None);
  EXPECT_EQ(textError("activation-checkpointing", "true"), "");
  EXPECT_EQ(textError("activation-checkpointing", "auto"), "");
  EXPECT_EQ(readError(R"({"activation_checkpointing": 1})"),
            "activation_checkpointing must be one of none, selective, full, "
            "auto, not 1");
  // The budget belongs to auto; 0 means the GPU's memory less 10%.
  EXPECT_EQ(readError(R"({"activation_checkpointing": "auto",
                          "memory_budget_gib": 40})",
                      &job),
            "");
  EXPECT_EQ(getMemoryBudgetBytes(job), int64_t(40) << 30);
  EXPECT_EQ(getMemoryBudgetBytes(TrainingJob()), defaultMemoryBudgetBytes());
  EXPECT_EQ(defaultMemoryBudgetBytes(), (int64_t(143771) << 20) / 10 * 9);
  EXPECT_EQ(readError(R"({"activation_checkpointing": "full",
                          "memory_budget_gib": 40})"),
            "memory_budget_gib 40 needs activation_checkpointing auto (it is "
            "full)");
  EXPECT_EQ(readError(R"({"memory_budget_gib": -1})"),
            "memory_budget_gib -1 must not be negative");
  // The host link's rate is auto's, weighing offloading.
  EXPECT_EQ(readError(R"({"activation_checkpointing": "auto",
                          "sm_activation_offloading": true,
                          "host_link_gb_per_s": 450})",
                      &job),
            "");
  EXPECT_EQ(job.hostLinkGbPerS, 450);
  EXPECT_EQ(readError(R"({"activation_checkpointing": "auto",
                          "host_link_gb_per_s": 450})"),
            "host_link_gb_per_s 450 needs activation_checkpointing auto and "
            "sm_activation_offloading true (they are auto and false)");
  EXPECT_EQ(readError(R"({"host_link_gb_per_s": -1})"),
            "host_link_gb_per_s -1 must not be negative");
}

TEST(TrainingJob, Ranges) {
  EXPECT_EQ(readError(R"({"micro_batch_size": 0})"),
            "micro_batch_size 0 must be at least 1");
  EXPECT_EQ(readError(R"({"seq_length": 1})"),
            "seq_length 1 must be at least 2");
  EXPECT_EQ(readError(R"({"global_batch_size": -4})"),
            "global_batch_size -4 must not be negative");
  EXPECT_EQ(readError(R"({"world_size": 0})"),
            "world_size 0 must be at least 1");
  EXPECT_EQ(readError(R"({"expert_parallel_degree": 0})"),
            "expert_parallel_degree 0 must be at least 1");
  EXPECT_EQ(readError(R"({"hybrid_shard_degree": -1})"),
            "hybrid_shard_degree -1 must not be negative");
  EXPECT_EQ(readError(R"({"activation_loading_horizon": 0})"),
            "activation_loading_horizon 0 must be at least 1");
  EXPECT_EQ(readError(R"({"random_seed": -1})"),
            "random_seed -1 must not be negative");
  EXPECT_EQ(readError(R"({"beta1": 1.0})"), "beta1 1 must be in [0, 1)");
  EXPECT_EQ(readError(R"({"beta2": -0.5})"), "beta2 -0.5 must be in [0, 1)");
  EXPECT_EQ(readError(R"({"adam_epsilon": 0})"),
            "adam_epsilon 0 must be positive");
  EXPECT_EQ(readError(R"({"initializer_range": -0.02})"),
            "initializer_range -0.02 must be positive");
  EXPECT_EQ(readError(R"({"router_aux_loss_coef": -1})"),
            "router_aux_loss_coef -1 must not be negative");
  EXPECT_EQ(readError(R"({"router_z_loss_coef": -0.1})"),
            "router_z_loss_coef -0.1 must not be negative");
  EXPECT_EQ(readError(R"({"weight_decay": -0.1})"),
            "weight_decay -0.1 must not be negative");
  EXPECT_EQ(readError(R"({"max_grad_norm": -1})"),
            "max_grad_norm -1 must not be negative");
  EXPECT_EQ(readError(R"({"max_grad_norm": 0})"), "");
}

TEST(TrainingJob, RulesBetweenKeys) {
  EXPECT_EQ(readError(R"({"param_dtype": "bf16"})"),
            "param_dtype bf16 needs bf16 true (a bf16 model computes in "
            "bf16)");
  EXPECT_EQ(readError(R"({"param_dtype": "bf16", "bf16": true})"), "");
}

TEST(TrainingJob, FileErrors) {
  TrainingJob job;
  llvm::Error missing = readTrainingJobConfig("/nonexistent/job.json", job);
  ASSERT_TRUE(bool(missing));
  EXPECT_EQ(llvm::StringRef(llvm::toString(std::move(missing))).substr(0, 45),
            "cannot read config '/nonexistent/job.json': N");
  ConfigFile broken(R"({"micro_batch_size": 2,)");
  llvm::Error notJson = readTrainingJobConfig(broken.getPath(), job);
  ASSERT_TRUE(bool(notJson));
  EXPECT_TRUE(llvm::StringRef(llvm::toString(std::move(notJson)))
                  .contains("' is not JSON: "));
  ConfigFile array("[1]");
  llvm::Error notObject = readTrainingJobConfig(array.getPath(), job);
  ASSERT_TRUE(bool(notObject));
  EXPECT_EQ(llvm::toString(std::move(notObject)),
            "config '" + array.getPath().str() + "' must be a JSON object");
}

TEST(TrainingJob, FlagText) {
  TrainingJob job;
  ASSERT_FALSE(bool(setTrainingJobText(job, "micro-batch-size", "8")));
  ASSERT_FALSE(bool(setTrainingJobText(job, "bf16", "")));
  ASSERT_FALSE(bool(setTrainingJobText(job, "keep-param-copies", "false")));
  ASSERT_FALSE(bool(setTrainingJobText(job, "moe-load-balancing", "none")));
  ASSERT_FALSE(bool(setTrainingJobText(job, "router-aux-loss-coef", "1e-3")));
  ASSERT_FALSE(bool(setTrainingJobText(job, "checkpoint-dir", "out/ckpt")));
  ASSERT_FALSE(bool(setTrainingJobText(job, "seed", "5")));
  EXPECT_EQ(job.microBatchSize, 8);
  EXPECT_TRUE(job.bf16);
  EXPECT_FALSE(job.keepParamCopies);
  EXPECT_EQ(job.loadBalancing, mlir::moe::LoadBalancing::none);
  EXPECT_EQ(job.routerAuxLossCoef, 1e-3);
  EXPECT_EQ(job.checkpointDir, "out/ckpt");
  EXPECT_EQ(job.randomSeed, 5);
  // Errors call the key as it was spelt.
  EXPECT_EQ(textError("micro-batch-size", "2.5"),
            "micro-batch-size 2.5 must be an integer");
  EXPECT_EQ(textError("micro-batch-size", "two"),
            "micro-batch-size must be an integer, not \"two\"");
  EXPECT_EQ(textError("bf16", "yes"),
            "bf16 must be true or false, not \"yes\"");
  // A JSON object given as a flag's text names its repeated key too.
  EXPECT_EQ(textError("custom_ops", R"({"a.b::G": "grouped_matmul", )"
                                    R"("a.b::G": "grouped_matmul"})"),
            "custom_ops: key 'a.b::G' appears twice in the top-level "
            "object: say it once");
  EXPECT_EQ(textError("max-grad-norm", "inf"),
            "max-grad-norm must be a number, not \"inf\"");
  EXPECT_EQ(textError("sharding-strategy", "zero3"),
            "sharding-strategy 'zero3' is not one of full_shard, "
            "hybrid_shard, no_shard");
  EXPECT_EQ(textError("seq-len", "64").substr(0, 25),
            "unknown key 'seq-len' (kn");
}

TEST(TrainingJob, CompileRefusesWhatItDoesNotImplement) {
  auto compileError = [](llvm::StringRef key, llvm::StringRef value) {
    TrainingJob job;
    if (llvm::Error err = setTrainingJobText(job, key, value))
      return llvm::toString(std::move(err));
    return implementedError(job, JobConsumer::Compile);
  };
  EXPECT_EQ(implementedError(TrainingJob(), JobConsumer::Compile), "");
  // Any layout, either dispatcher and the token shuffle compile, and every
  // activation checkpointing policy.
  for (auto [key, value] :
       {std::pair{"world_size", "2"}, {"expert_parallel_degree", "2"},
        {"hybrid_shard_degree", "2"}, {"sharding_strategy", "full_shard"},
        {"global_token_shuffle", "true"},
        {"moe_all_to_all_dispatcher", "false"},
        {"activation_checkpointing", "full"},
        {"activation_checkpointing", "auto"},
        {"sm_activation_offloading", "true"}})
    EXPECT_EQ(compileError(key, value), "") << key;
  EXPECT_EQ(compileError("fp8", "true"),
            "fp8 true is not implemented yet by moec compile (bf16 and fp32 "
            "only)");
  EXPECT_EQ(compileError("global_batch_size", "4"),
            "global_batch_size 4 is not implemented yet by moec compile (no "
            "gradient accumulation: it must be 0 or world_size times "
            "micro_batch_size)");
  EXPECT_EQ(compileError("global_batch_size", "2"), "");
  EXPECT_EQ(compileError("delayed_param", "false"),
            "delayed_param false is not implemented yet by moec compile "
            "(programs create their parameters from the seed)");
  EXPECT_EQ(compileError("random_seed", "7"),
            "random_seed 7 is a setting of the program's run, not of its "
            "compilation: give it to train_step when it runs (--seed 7)");
  EXPECT_EQ(compileError("checkpoint_dir", "ckpt"),
            "checkpoint_dir 'ckpt' is a setting of the program's run, not of "
            "its compilation: give it to train_step when it runs "
            "(--checkpoint-dir 'ckpt')");
  EXPECT_EQ(compileError("skip_nonfinite_steps", "2"),
            "skip_nonfinite_steps 2 is a setting of the program's run, not of "
            "its compilation: give it to train_step when it runs "
            "(--skip-nonfinite-steps 2)");
}

TEST(TrainingJob, TrainAndPlanImplementDifferentParts) {
  TrainingJob job;
  job.delayedParam = false;
  job.randomSeed = 7;
  EXPECT_EQ(implementedError(job, JobConsumer::Train), "");
  job.checkpointDir = "ckpt";
  EXPECT_EQ(implementedError(job, JobConsumer::Train),
            "checkpoint_dir 'ckpt' is not implemented yet by moec train (it "
            "does not save checkpoints)");
  TrainingJob bf16Model;
  bf16Model.bf16 = true;
  bf16Model.paramDtype = ParamDtype::Bf16;
  EXPECT_EQ(implementedError(bf16Model, JobConsumer::Compile), "");
  EXPECT_EQ(implementedError(bf16Model, JobConsumer::Train),
            "param_dtype bf16 is not implemented yet by moec train (the "
            "reference keeps fp32 master weights)");
  EXPECT_EQ(implementedError(bf16Model, JobConsumer::Plan),
            "param_dtype bf16 is not implemented yet by moec plan (plans "
            "assume fp32 master weights)");
  // The plan plans parallel degrees and checkpointing.
  TrainingJob parallel;
  parallel.worldSize = 16;
  parallel.expertParallelDegree = 2;
  parallel.hybridShardDegree = 8;
  parallel.shardingStrategy = ShardingStrategy::FullShard;
  parallel.activationCheckpointing = ActivationCheckpointing::Full;
  parallel.globalBatchSize = 64;
  EXPECT_EQ(implementedError(parallel, JobConsumer::Plan), "");
  EXPECT_EQ(implementedError(parallel, JobConsumer::Train),
            "global_batch_size 64 is not implemented yet by moec train (no "
            "gradient accumulation: it must be 0 or world_size times "
            "micro_batch_size)");
  parallel.globalBatchSize = parallel.worldSize * parallel.microBatchSize;
  EXPECT_EQ(implementedError(parallel, JobConsumer::Train), "");
  // moe-checkpoint-activations chooses auto's policies per layer; the plan
  // the first fixed policy that fits.
  parallel.activationCheckpointing = ActivationCheckpointing::Auto;
  EXPECT_EQ(implementedError(parallel, JobConsumer::Train), "");
  EXPECT_EQ(implementedError(parallel, JobConsumer::Plan), "");
  // Offloading: in the IR (moe-offload-activations) and in the plan.
  parallel.activationCheckpointing = ActivationCheckpointing::Selective;
  parallel.smActivationOffloading = true;
  EXPECT_EQ(implementedError(parallel, JobConsumer::Train), "");
  EXPECT_EQ(implementedError(parallel, JobConsumer::Plan), "");
  parallel.smActivationOffloading = false;
  // The reference and the compiled programs run any layout, with either
  // dispatcher and the token shuffle; the plan does not model those two.
  parallel.activationCheckpointing = ActivationCheckpointing::None;
  parallel.moeAllToAllDispatcher = false;
  parallel.globalTokenShuffle = true;
  EXPECT_EQ(implementedError(parallel, JobConsumer::Train), "");
  EXPECT_EQ(implementedError(parallel, JobConsumer::Plan),
            "moe_all_to_all_dispatcher false is not implemented yet by moec "
            "plan (tokens are dispatched by all-to-all)");
  EXPECT_EQ(implementedError(parallel, JobConsumer::Compile), "");
  parallel.fp8 = true;
  EXPECT_EQ(implementedError(parallel, JobConsumer::Plan),
            "fp8 true is not implemented yet by moec plan (bf16 and fp32 "
            "only)");
}
