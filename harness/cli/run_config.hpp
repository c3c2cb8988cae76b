#pragma once
// `uvcluster run --config FILE`: run options from a file. FILE is our JSON format (one object
// whose keys are run's long options with '_' for '-', plus script/args/env/env_<set>), or a PM2
// process file: `ecosystem.config.js`/.cjs (read by requiring it in /usr/bin/node) or JSON with
// an `apps` array, of which the fields we support are used and the others named in one warning.
// The file becomes command-line arguments for run's own option table, placed before the real
// ones, so a flag on the command line overrides the file.
#include <string>
#include <vector>

#include "uvcluster/error.hpp"

namespace uvcluster::cli {

struct RunConfig {
  std::vector<std::string> options;      // "--instances", "4", "--wait-ready", ...
  std::vector<std::string> option_keys;  // the file's key behind each entry of `options`
  std::vector<std::string> command;      // script then args; empty when the file has no script
  std::vector<std::string> unsupported;  // PM2 fields this tool ignores
};

// `env_set`: the `env_<env_set>` object to apply after `env` ("" for none). The error is one
// line naming the file.
Result<RunConfig, std::string> read_run_config(const std::string& path, const std::string& env_set);

}  // namespace uvcluster::cli
