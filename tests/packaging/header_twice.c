/* The header before anything else, so that it must bring what it needs itself, and a second
   time, so that its include guard must hold. Compiled as C and as C++ by tests/packaging.rs. */
#include "tokio_bridge.h"
#include "tokio_bridge.h"

int main(void) {
    tb_runtime_config cfg;
    tb_runtime_config_init(&cfg);
    return tb_version() == TB_VERSION_HEX && cfg.struct_size == sizeof cfg ? 0 : 1;
}
