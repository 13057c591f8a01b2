#include "tests/support/run_process.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace actmem::testing {

ProcessResult run_process(const std::string& command) {
  ProcessResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buffer;
  std::size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) {
    result.output.append(buffer.data(), n);
  }
  const int status = pclose(pipe);
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  return result;
}

std::string ReportingRun::text(const std::string& key) const {
  const auto it = values.find(key);
  return it == values.end() ? "" : it->second;
}

long long ReportingRun::number(const std::string& key) const {
  const auto it = values.find(key);
  return it == values.end() ? -1 : std::stoll(it->second);
}

ReportingRun run_reporting(const std::string& command) {
  const ProcessResult result = run_process(command);
  ReportingRun run{result.exit_code, result.output, {}};
  std::istringstream lines(result.output);
  for (std::string line; std::getline(lines, line);) {
    const std::size_t space = line.find(' ');
    if (space != std::string::npos) run.values[line.substr(0, space)] = line.substr(space + 1);
  }
  return run;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream content;
  content << in.rdbuf();
  return content.str();
}

std::string temp_path(const std::string& stem) {
  static std::atomic<int> counter{0};
  return (std::filesystem::temp_directory_path() /
          (stem + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++)))
      .string();
}

}  // namespace actmem::testing
