# Shared settings for actmem's own targets.

# actmem_warnings(<target>): the project's warning flags, PRIVATE so they never leak to users.
function(actmem_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor)
  if(ACTMEM_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

if(ACTMEM_SANITIZE)
  add_compile_options(-fsanitize=${ACTMEM_SANITIZE} -fno-omit-frame-pointer -g)
  add_link_options(-fsanitize=${ACTMEM_SANITIZE})
endif()
