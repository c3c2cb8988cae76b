#pragma once
// Signal names <-> numbers, as Node spells them ("SIGTERM").
#include <optional>
#include <string>
#include <string_view>

namespace uvcluster {

// nullopt for an unknown name. Accepts "SIGTERM" and decimal numbers ("15", "0").
std::optional<int> signal_number(std::string_view name);
// "SIGTERM" for 15; "" for a number with no name.
std::string signal_name(int signum);

}  // namespace uvcluster
